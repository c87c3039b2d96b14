"""The composition layer's first half: a :class:`~manifold_ssl.config.Config` turned into the
parts the libraries take, in one place. The data's splits and captions, the view
distributions, the method, the batches, the optimiser and its schedule, the loop's settings:
every ``cfg.<section>.<key>`` a run reads is read here (or in the evaluation and the CLI above
it), so that :mod:`manifold_ssl.training`, :mod:`manifold_ssl.data` and the models take
explicit arguments and never import the config.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..config import Config, config_to_dict, effective_lr, resampled
from ..data.captions import (
    ZERO_SHOT_TEMPLATES,
    Captions,
    GeneratedCaptions,
    ImageAttributes,
    class_words,
    count_captions,
    read_captions,
)
from ..data.datasets import file_sources
from ..data.files import UNLABELLED, ImageFiles
from ..data.pairs import CaptionBatches
from ..data.paths import DataPath, check_disjoint, split_path
from ..data.remote import fetch_shards, is_remote, shard_urls
from ..data.resampled import ResampledBatches
from ..data.splits import DataSplits, index_files, load_splits, stratified_split
from ..data.stream import Layout, TrainBatches, make_batches, resolve_workers
from ..data.tensors import ImageTensors
from ..data.views import AugmentSpec, MultiViewAugment, dataset_preset, preset
from ..methods import MULTIMODAL, MultimodalMethod, build_method
from ..models.backbones import build_backbone
from ..models.heads import embedding_dim
from ..models.text import build_text_tower, build_tokenizer
from ..probes.training import TrainingProbe
from ..schedules import cosine, warmup_cosine
from ..training.distributed import DistContext
from ..training.loop import LoopSettings, Method
from ..training.optim import make_optimizer
from ..training.tracking import Tracking

__all__ = [
    "build_method_for",
    "caption_source",
    "captions_of",
    "check_zero_shot_words",
    "eval_preprocess",
    "loop_settings",
    "lr_at_step",
    "optimizer_for",
    "packing_rule",
    "splits_of",
    "train_batches",
    "training_probe",
    "view_size",
    "view_specs",
    "zero_shot_prompts",
    "zero_shot_words",
]


# --------------------------------------------------------------------------- data
def splits_of(cfg: Config) -> DataSplits:
    """The splits ``cfg.data`` describes: of remote shards, a local copy read by random access
    (``data.eval_path``, else the train and test shards fetched once into the cache)."""
    d = cfg.data
    skipped: list[str] = []
    splits = load_splits(
        d.name,
        d.root,
        _local_path(cfg, skipped),
        d.val_fraction,
        d.split_seed,
        loader="auto" if d.loader == "resampled" else d.loader,
        image_size=d.image_size,
        crop_fraction=d.crop_fraction,
        classes_file=d.classes_file,
        test_split=d.test_split,
        unlabeled=d.unlabeled,
        memory_limit_gb=d.memory_limit_gb,
        workers=resolve_workers(d.workers),
    )
    return dataclasses.replace(splits, shards_skipped=tuple(skipped)) if skipped else splits


def _local_path(cfg: Config, skipped: list[str]) -> DataPath | None:
    d = cfg.data
    if not is_remote(d.path) or d.eval_path:
        return d.eval_path or d.path
    return eval_copy(cfg, skipped)


def eval_copy(cfg: Config, skipped: list[str] | None = None) -> dict[str, str]:
    """The local copy a remote run's evaluation, monitor and probes read by random access: the
    test split's shards, and a seeded choice of ``data.eval_shards`` training shards (their
    labelled images are the kNN bank, the probes' and the linear probe's training images and
    the validation split; pretraining streams every training shard), fetched once into
    ``<root>/cache/shards`` (a split given as local files is read where it is). Under
    ``data.shard_errors=skip`` a shard that cannot be fetched is left out, and one line says
    how many were (their errors appended to ``skipped``). Returns the copy as a ``data.path``
    mapping."""
    d = cfg.data
    assert d.path is not None
    train = shard_urls(d.path, "train")
    test = shard_urls(d.path, d.test_split)
    check_disjoint(d.test_split, test, train)
    if 0 < d.eval_shards < len(train):
        pick = np.random.default_rng([d.split_seed, len(train)]).choice(
            len(train), d.eval_shards, replace=False
        )
        train = [train[i] for i in sorted(pick)]
    folder = Path(d.root) / "cache" / "shards"
    skipped = [] if skipped is None else skipped
    local, wanted = {}, 0
    for split, urls in (("train", train), (d.test_split, test)):
        if not is_remote(split_path(d.path, split)):
            local[split] = split_path(d.path, split)
            continue
        copies, missed = fetch_shards(urls, folder, d.shard_errors)
        skipped.extend(missed)
        wanted += len(urls)
        if not copies:
            raise OSError(f"no shard of the {split} split could be fetched: {missed[0]}")
        local[split] = brace_list(copies)
    if skipped:
        print(
            f"skipped {len(skipped)} of the {wanted} shards fetched for the evaluation "
            f"(data.shard_errors=skip): {'; '.join(skipped[:3])}",
            file=sys.stderr,
        )
    return local


def brace_list(paths: list[str]) -> str:
    """One brace pattern of the files ``paths`` of one folder (``folder/{a,b}.tar``)."""
    folders = {os.path.dirname(p) for p in paths}
    if len(paths) == 1 or len(folders) != 1:
        assert len(paths) == 1, "one folder's files"
        return paths[0]
    names = ",".join(os.path.basename(p) for p in paths)
    return os.path.join(folders.pop(), "{" + names + "}")


def load_splits_ranked(cfg: Config, ctx: DistContext) -> DataSplits:
    """:func:`splits_of` under DDP: rank 0 decodes or indexes (and caches) the dataset first;
    the other ranks then read the cache."""
    splits = splits_of(cfg) if ctx.is_main else None
    if ctx.world_size > 1:
        dist.barrier()
    return splits or splits_of(cfg)


# --------------------------------------------------------------------------- captions and prompts
def captions_of(cfg: Config, splits: DataSplits) -> Captions:
    """The captions of the pretraining images (``text.captions``, resolved by
    :func:`caption_source`; see :mod:`manifold_ssl.data.captions`), in the order of
    ``splits.pretraining()``."""
    d = cfg.data
    mode, line = caption_source(cfg)
    if d.unlabeled:
        raise ValueError("multimodal pretraining does not read data.unlabeled (no captions)")
    if mode == "files":
        return read_captions(_training_files(cfg))
    train = splits.train
    if train.classes == [UNLABELLED]:
        raise ValueError(
            f"{line}; but generated captions name each image's class, and these images have "
            "none (caption-only shards): give every image its <key>.txt caption"
        )
    if not isinstance(train, ImageTensors):
        raise ValueError(
            f"{line}; generated captions measure the images in memory: use data.loader=memory "
            "(or <key>.txt captions for every image, read with text.captions=files)"
        )
    return GeneratedCaptions(train, ImageAttributes.fit(train.images, train.labels))


def _training_files(cfg: Config) -> ImageFiles:
    """The training split's files, in the order both loaders keep them."""
    d = cfg.data
    files = index_files(d.name, "train", d.root, d.path, d.classes_file)
    keep, _ = stratified_split(files.labels, d.val_fraction, d.split_seed)
    return files.subset(keep)


_CAPTIONED: dict[str, tuple[int, int, list[str]]] = {}  # data -> (with a caption, images, missing)


def caption_source(cfg: Config) -> tuple[str, str]:
    """Where a multimodal run's captions come from, ``files`` or ``generated``, and a line
    saying which and why (printed when a run starts, recorded in its ``meta.json``).
    ``text.captions: files`` or ``generated`` is taken as given; ``auto``: the data's
    ``<key>.txt`` captions when every training image has one, else captions generated from
    the images (a data set without caption files, or one where some images have none: the
    line counts them, so that no caption is left unread without a word)."""
    d, mode = cfg.data, cfg.text.captions
    if mode == "generated":
        return (
            mode,
            "captions: generated from each image's class and pixels (text.captions=generated)",
        )
    if mode == "files":
        return mode, "captions: the data's <key>.txt files (text.captions=files)"
    if d.name not in file_sources():
        return "generated", (
            f"captions: generated from each image's class and pixels (text.captions=auto: "
            f"{d.name} has no caption files)"
        )
    key = json.dumps(
        [d.name, d.path, d.root, d.classes_file, d.val_fraction, d.split_seed], default=str
    )
    if key not in _CAPTIONED:
        files = _training_files(cfg)
        have, missing = count_captions(files)
        _CAPTIONED[key] = (have, len(files), missing[:1])
    have, total, missing = _CAPTIONED[key]
    if have == total:
        return "files", (
            f"captions: the data's <key>.txt files, one for each of the {total} training images "
            "(text.captions=auto)"
        )
    return "generated", (
        f"captions: generated from each image's class and pixels (text.captions=auto: "
        f"{have} of the {total} training images have a <key>.txt caption, e.g. {missing[0]}; "
        "text.captions=generated says so, text.captions=files refuses the images without one)"
    )


def zero_shot_prompts(cfg: Config, splits: DataSplits) -> tuple[list[str], list[str]]:
    """The class words and the prompt templates of zero-shot evaluation (``{label}`` in each):
    ``text.zero_shot_templates``, else the held-out templates of the images' kind; the words
    as :func:`zero_shot_words` gives them."""
    kind = "grey" if splits.channels == 1 else "colour"
    templates = cfg.text.zero_shot_templates or list(ZERO_SHOT_TEMPLATES[kind])
    return zero_shot_words(cfg, splits.train.classes), templates


def zero_shot_words(cfg: Config, classes: list[str]) -> list[str]:
    """The class words prompts use: ``text.class_names`` (in label order), else the class
    names as words. Captions read from files are written in words, so class names that are
    ids (WebDataset ``.cls`` numbers) cannot prompt them: that is an error naming
    ``text.class_names``, not a chance-level accuracy. (Generated captions are made from the
    same names, ids or not, so they prompt them.)"""
    names = cfg.text.class_names
    if names:
        if len(names) != len(classes):
            raise ValueError(
                f"text.class_names has {len(names)} names, but the data set has "
                f"{len(classes)} classes ({', '.join(classes[:10])})"
            )
        return list(names)
    if caption_source(cfg)[0] == "files" and all(c.lstrip("-").isdigit() for c in classes):
        raise ValueError(
            f"zero-shot prompts need class words, but the classes of {cfg.data.path} are the "
            f"ids {', '.join(classes[:5])}{' ...' if len(classes) > 5 else ''} and its captions "
            "are files: set text.class_names to their names in label order (e.g. "
            "--text.class_names='[airplane, automobile, ...]'), or pretrain with --no-eval "
            "--train.knn_every=0"
        )
    return class_words(classes)


def check_zero_shot_words(cfg: Config) -> None:
    """:func:`zero_shot_words` before a run starts (from the files' index: no decoding), so
    that a multimodal run without class words is refused before it trains, not after."""
    if cfg.method.name in MULTIMODAL and caption_source(cfg)[0] == "files":
        d = cfg.data
        zero_shot_words(cfg, index_files(d.name, "train", d.root, d.path, d.classes_file).classes)


# --------------------------------------------------------------------------- views and batches
def view_specs(cfg: Config, splits: DataSplits) -> tuple[AugmentSpec, ...]:
    """``views.preset`` standardised with the data's statistics, at ``data.image_size``."""
    return dataset_preset(cfg.views.preset, *splits.normalisation, size=cfg.data.image_size)


def view_size(cfg: Config, splits: DataSplits) -> int:
    """The side of the training views: ``data.image_size``, else the preset's, else the
    images' own."""
    spec = preset(cfg.views.preset)[0]
    return cfg.data.image_size or spec.size or splits.image_size


def eval_preprocess(cfg: Config, splits: DataSplits) -> dict[str, Any]:
    """How the run makes an image's un-augmented view (the features, the monitors, zero-shot
    transfer): the shorter side resized to ``size / crop_fraction`` (bilinear, antialiased:
    :func:`manifold_ssl.data.files.centre_view`), the central ``size``×``size``, then each
    channel standardised by the training images' ``mean`` and ``std`` (in [0, 1] units).
    Recorded in every checkpoint, so that an export hands the same view to other libraries."""
    mean, std = splits.normalisation
    return {
        "size": view_size(cfg, splits),
        "crop_fraction": cfg.data.crop_fraction,
        "interpolation": "bilinear",
        "mean": list(mean),
        "std": list(std),
    }


def train_batches(
    cfg: Config, splits: DataSplits, ctx: DistContext, device: torch.device
) -> TrainBatches:
    """The pretraining images as batches of K views (memory or streamed), with their captions
    for a multimodal method."""
    d = cfg.data
    layout = Layout(cfg.train.batch_size, ctx.rank, ctx.world_size, cfg.train.seed, device)
    aug = MultiViewAugment(view_specs(cfg, splits), cfg.views.num_views)
    if resampled(cfg):
        assert d.path is not None
        in_workers = d.views_on == "workers" or (d.views_on == "auto" and device.type == "cpu")
        return ResampledBatches(
            shard_urls(d.path, "train"),
            splits.train.classes,
            aug,
            layout,
            view_size(cfg, splits),
            d.samples_per_epoch,
            d.streams,
            d.shuffle_buffer,
            d.shard_errors,
            d.workers,
            d.prefetch,
            in_workers,
            d.shuffle_initial,
        )
    images = make_batches(
        splits.pretraining(), aug, layout, view_size(cfg, splits), d.workers, d.prefetch, d.views_on
    )
    if cfg.method.name not in MULTIMODAL:
        return images
    tokenize = build_tokenizer(cfg.text.context_length)
    return CaptionBatches(images, captions_of(cfg, splits), tokenize, layout)


# --------------------------------------------------------------------------- the method
def build_method_for(
    cfg: Config, in_channels: int, seed: int | None = None, image_size: int | None = None
) -> Method:
    """``cfg``'s method, initialised from ``seed`` (default ``train.seed``) in a forked RNG:
    the same weights on every call, and the caller's global RNG state left as it was.
    ``image_size``: the views' side (:func:`view_size`), which ViT backbones are built for."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed if seed is None else seed)
        backbone = build_backbone(
            cfg.model.backbone,
            in_channels,
            cfg.model.small_images,
            cfg.model.width,
            image_size=image_size or cfg.data.image_size,
            kwargs=cfg.model.kwargs,
        )
        if cfg.method.name in MULTIMODAL:
            t = cfg.text
            dim = embedding_dim(cfg.model.projector, backbone.out_dim)  # type: ignore[arg-type]
            text = build_text_tower(dim, t.width, t.layers, t.heads, t.context_length)
            return MultimodalMethod(
                cfg.method.name, backbone, cfg.model.projector, text, cfg.method.loss
            )
        return build_method(
            cfg.method.name,
            backbone,
            cfg.model.projector,
            predictor=cfg.model.predictor,
            momentum=cfg.method.momentum,
            ema=cfg.method.ema,
            loss_kwargs=cfg.method.loss,
        )


# --------------------------------------------------------------------------- probes
def packing_rule(cfg: Config) -> tuple[float, str]:
    """(r_s, convention) of the probes' neighbour count: ``probes.clamp_convention``, where
    ``objective`` counts as the run's CLAMP loss does (its r_s; the official form caps the
    reach), and other methods as the paper."""
    loss = cfg.method.loss if cfg.method.name == "clamp" else {}
    r_s = float(loss.get("r_s", 7.0))
    convention = cfg.probes.clamp_convention
    if convention == "objective":
        convention = "official" if loss.get("form", "official") == "official" else "paper"
    return r_s, convention


def training_probe(
    cfg: Config, splits: DataSplits, device: torch.device, run_dir: Path
) -> TrainingProbe:
    """The geometry probes of ``cfg.probes`` for a run on ``splits``."""
    return TrainingProbe(
        cfg.probes,
        splits,
        device,
        run_dir,
        view_specs(cfg, splits),
        cfg.views.num_views,
        (cfg.eval.knn_k, cfg.eval.knn_temperature),
        packing_rule(cfg),
    )


# --------------------------------------------------------------------------- optimisation
def optimizer_for(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """``cfg.optim``'s optimiser over ``model``'s parameters at the peak learning rate."""
    o = cfg.optim
    return make_optimizer(
        model, o.name, effective_lr(cfg), o.momentum, o.weight_decay, o.decay_all, o.lars_eta
    )


def lr_at_step(cfg: Config, step: int, steps_per_epoch: int) -> float:
    """Linear warmup over ``warmup_steps`` or ``warmup_epochs`` (per step), then cosine to
    ``min_lr_ratio`` (per step, or per epoch with ``cosine_epoch``) or flat."""
    peak = effective_lr(cfg)
    total = cfg.train.epochs * steps_per_epoch
    warmup = cfg.optim.warmup_steps or round(cfg.optim.warmup_epochs * steps_per_epoch)
    floor = peak * cfg.optim.min_lr_ratio
    if step < warmup or cfg.optim.schedule == "cosine":
        return warmup_cosine(step, total, peak, warmup, floor)
    if cfg.optim.schedule == "constant":
        return peak
    # cosine_epoch: constant within an epoch, as an epoch scheduler
    return cosine((step // steps_per_epoch) / cfg.train.epochs, peak, floor)


def tracking_of(cfg: Config) -> Tracking:
    """Where ``cfg``'s run is tracked besides its files (``train.wandb*``), with its config."""
    t = cfg.train
    return Tracking(t.wandb, t.wandb_project, t.wandb_group, config_to_dict(cfg))


#: The monitor value ``train.keep_best`` maximises.
BEST_METRIC = {"none": "", "knn": "knn_val_accuracy", "online": "online_linear_val_accuracy"}


def loop_settings(cfg: Config) -> LoopSettings:
    """What the training loop reads of ``cfg``: its ``train`` section, the optimiser and its
    schedule, and the config itself as the record every checkpoint carries."""
    t = cfg.train

    def schedule(step: int, steps_per_epoch: int) -> float:
        return lr_at_step(cfg, step, steps_per_epoch)

    def optimizer(model: nn.Module) -> torch.optim.Optimizer:
        return optimizer_for(cfg, model)

    return LoopSettings(
        epochs=t.epochs,
        batch_size=t.batch_size,
        seed=t.seed,
        log_every=t.log_every,
        knn_every=t.knn_every,
        checkpoint_every=t.checkpoint_every,
        checkpoint_every_steps=t.checkpoint_every_steps,
        keep_every=t.keep_every,
        keep_limit=t.keep_limit,
        keep_best=BEST_METRIC[t.keep_best],
        max_steps=t.max_steps,
        time_budget_s=t.time_budget_s,
        amp=t.amp,
        amp_cpu=t.amp_cpu,
        channels_last=t.channels_last,
        compile=t.compile,
        compile_backend=t.compile_backend,
        sync_bn=cfg.model.sync_bn,
        online_linear=t.online_linear,
        online_lr=t.online_lr,
        num_threads=t.num_threads,
        tensorboard=t.tensorboard,
        tracking=tracking_of(cfg),
        optimizer=optimizer,
        lr=schedule,
        record=config_to_dict(cfg),
        name=f"{cfg.method.name} {cfg.data.name}",
    )
