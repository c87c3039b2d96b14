"""The composition layer's evaluation half: from a pretrained run to its results (the
evaluation protocol, ``eval.json`` and the report), the kNN monitor the loop calls, zero-shot
classification.

The CLI's ``pretrain`` and ``evaluate`` and the sweep's trials all end here, so a run evaluated
from any of them holds the same files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Config, config_to_dict
from ..data.captions import class_words
from ..data.datasets import file_sources, load_dataset
from ..data.splits import DataSplits, index_files
from ..data.stream import resolve_workers
from ..data.tensors import ImageTensors
from ..evaluation.features import extract_features
from ..evaluation.knn import knn_accuracy
from ..evaluation.protocol import evaluate_with_baselines
from ..evaluation.report import write_report
from ..evaluation.zeroshot import class_text_embeddings, zero_shot_accuracy
from ..methods import MULTIMODAL, MultimodalMethod
from ..models.text import build_tokenizer
from ..runinfo import read_metrics, write_json
from ..training.loop import Method, Monitor
from ..training.tracking import WandbRun
from .build import build_method_for, tracking_of, view_size, view_specs, zero_shot_prompts
from .record import checkpoint_name

__all__ = [
    "check_zero_shot_transfer",
    "evaluate_run",
    "final_percent_error",
    "knn_monitor",
    "online_accuracy",
    "zero_shot",
]


def zero_shot(
    cfg: Config,
    method: MultimodalMethod,
    splits: DataSplits,
    device: torch.device | str,
    names: tuple[str, ...] = ("val", "test"),
) -> dict[str, float]:
    """Zero-shot top-1 (and top-5 with more than 5 classes) of ``method`` on the splits
    ``names``, prompting with the class words in the held-out templates
    (:func:`~manifold_ssl.data.splits.zero_shot_prompts`)."""
    classes, templates = zero_shot_prompts(cfg, splits)
    named = {name: getattr(splits, name) for name in names}
    acc = _zero_shot_accuracy(cfg, method, classes, templates, named, splits, device)
    return {f"zero_shot_{name}_{k}": v for name, a in acc.items() for k, v in a.items()}


def _zero_shot_accuracy(
    cfg: Config,
    method: MultimodalMethod,
    words: list[str],
    templates: list[str],
    named: dict[str, Any],
    splits: DataSplits,
    device: torch.device | str,
) -> dict[str, dict[str, float]]:
    """Per split of ``named`` (name → images): top-1 (``accuracy``) and, with more than 5
    classes, ``top5`` of the image tower against the class embeddings of ``words`` averaged
    over ``templates`` (CLIP's prompt ensembling, computed once), the images standardised as
    the pretraining data's."""
    tokenize = build_tokenizer(cfg.text.context_length)
    was_training = method.training
    method.eval()
    try:
        weights = class_text_embeddings(method.encode_text, tokenize, words, templates, device)
    finally:
        method.train(was_training)
    tower = nn.Sequential(method.backbone, method.projector)
    top = (1, 5) if len(words) > 5 else (1,)
    out = {}
    for name, images in named.items():
        acc = zero_shot_accuracy(
            tower, weights, images, *splits.normalisation, device, cfg.data.workers, top
        )
        out[name] = {"accuracy": acc[1], **({"top5": acc[5]} if 5 in acc else {})}
    return out


def zero_shot_transfer(
    cfg: Config, method: MultimodalMethod, splits: DataSplits, device: torch.device | str
) -> dict[str, Any]:
    """Zero-shot top-1 (and top-5) of ``method`` on another labelled data set
    (``eval.zero_shot_data``, its ``zero_shot_split`` at the pretraining view size), prompted
    with its class words (``eval.zero_shot_class_names``, else its class names) in the
    held-out templates, ensembled."""
    e = cfg.eval
    assert e.zero_shot_data is not None
    data = load_dataset(
        e.zero_shot_data,
        e.zero_shot_split,
        cfg.data.root,
        e.zero_shot_path,
        size=view_size(cfg, splits),
        crop_fraction=cfg.data.crop_fraction,
        workers=resolve_workers(cfg.data.workers),
    )
    data = ImageTensors(_channels(data.images, splits.channels), data.labels, data.classes)
    words = _transfer_words(cfg, data.classes)
    _, templates = zero_shot_prompts(cfg, splits)
    split = e.zero_shot_split
    acc = _zero_shot_accuracy(cfg, method, words, templates, {split: data}, splits, device)[split]
    return {
        "dataset": e.zero_shot_data,
        "split": split,
        **{f"zero_shot_{split}_{k}": v for k, v in acc.items()},
        "chance": 1 / len(words),
        "images": int(data.images.shape[0]),
        "templates": templates,
    }


def _transfer_words(cfg: Config, classes: list[str]) -> list[str]:
    """The class words of zero-shot transfer: ``eval.zero_shot_class_names``, one per class
    of the other data set, else its class names as words."""
    e = cfg.eval
    words = list(e.zero_shot_class_names) or class_words(classes)
    if len(words) != len(classes):
        raise ValueError(
            f"eval.zero_shot_class_names has {len(words)} names, but {e.zero_shot_data} has "
            f"{len(classes)} classes ({', '.join(classes[:10])})"
        )
    return words


def check_zero_shot_transfer(cfg: Config) -> None:
    """``eval.zero_shot_*`` checked before a run trains, so that a wrong setting is refused at
    start rather than after training: the data set's split is found (a source of files is
    indexed, nothing decoded; another is decoded once into the cache, which the evaluation
    then reads) and the class words fit its classes; the transfer is a multimodal run's;
    ``zero_shot_path`` or ``zero_shot_class_names`` without ``zero_shot_data`` would be
    ignored, and is refused."""
    e = cfg.eval
    if e.zero_shot_data is None:
        unused = [k for k in ("zero_shot_path", "zero_shot_class_names") if getattr(e, k)]
        if unused:
            raise ValueError(
                f"eval.{unused[0]} is a setting of zero-shot transfer, which is off: set "
                "eval.zero_shot_data to the data set it belongs to"
            )
        return
    if cfg.method.name not in MULTIMODAL:
        raise ValueError(
            f"eval.zero_shot_data is the zero-shot transfer of a multimodal run (method.name: "
            f"{' | '.join(sorted(MULTIMODAL))}), but method.name is {cfg.method.name}"
        )
    name, split = e.zero_shot_data, e.zero_shot_split
    try:
        if name in file_sources():
            if e.zero_shot_path is None:
                raise ValueError(f"{name} needs eval.zero_shot_path (its folder or shards)")
            classes = index_files(name, split, cfg.data.root, e.zero_shot_path, None).classes
        else:
            classes = load_dataset(name, split, cfg.data.root, e.zero_shot_path).classes
    except (ValueError, OSError) as err:
        raise ValueError(
            f"eval.zero_shot_data={name} (split eval.zero_shot_split={split}"
            f"{f', eval.zero_shot_path={e.zero_shot_path}' if e.zero_shot_path else ''}) "
            f"cannot be read: {err}"
        ) from err
    _transfer_words(cfg, classes)


def _channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 images (N, C, H, W) with ``channels`` channels: colour to grey by ITU-R 601 luma
    (grey images stored as RGB come back exactly), grey to colour by repetition."""
    if images.shape[1] == channels:
        return images
    if channels == 1:
        luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * luma).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    return images.expand(-1, channels, -1, -1).contiguous()


def knn_monitor(cfg: Config) -> Monitor:
    """The training loop's monitor: kNN accuracy of the backbone on the validation split, and
    the zero-shot accuracy there of a multimodal method. On a GPU the features stay there and
    the kNN runs there, the forward in bfloat16 when the run trains in it (``train.amp``)."""

    def monitor(method: Method, splits: DataSplits, device: torch.device) -> dict[str, float]:
        mean, std = splits.normalisation
        cuda = device.type == "cuda"
        feats = [
            extract_features(
                method.backbone,
                s,
                mean,
                std,
                device=device,
                workers=cfg.data.workers,
                on_device=cuda,
                bf16=cuda and cfg.train.amp,
            )
            for s in (splits.train, splits.val)
        ]
        acc = knn_accuracy(
            feats[0],
            splits.train.labels,
            feats[1],
            splits.val.labels,
            splits.num_classes,
            cfg.eval.knn_k,
            cfg.eval.knn_temperature,
        )
        values = {"knn_val_accuracy": acc}
        online = online_accuracy(method, feats[1], splits.val.labels)
        if online is not None:
            values["online_linear_val_accuracy"] = online
        if isinstance(method, MultimodalMethod):
            values.update(zero_shot(cfg, method, splits, device, ("val",)))
        return values

    return monitor


def online_accuracy(method: Method, features: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Top-1 of ``method``'s online linear head (``train.online_linear``) on backbone
    ``features`` (N, F) of eval-mode images; None without a head."""
    head = getattr(method, "online_head", None)
    if head is None:
        return None
    param = next(head.parameters())
    with torch.no_grad():
        pred = head(features.to(param.device, param.dtype)).argmax(dim=1).cpu()
    return float((pred == labels).double().mean())


def evaluate_run(
    cfg: Config,
    method: Method,
    splits: DataSplits,
    run_dir: Path,
    device: str,
    extra: dict[str, object],
    progress: bool = True,
    overrides: Sequence[str] = (),
    checkpoint: str = "last.pt",
) -> dict[str, dict[str, Any]]:
    """kNN + linear probe of ``method``'s backbone next to the baselines, the fine-tunings of
    ``cfg.eval.semi_supervised``, zero-shot classification of a multimodal method; writes
    ``eval.json`` and ``report.md`` into ``run_dir``, with the evaluation settings that produced
    them (``--eval.*`` ``overrides``: ``eval-<overrides>.json`` and ``report-<overrides>.md``,
    beside the run's own; a kept ``checkpoint`` other than ``last.pt``:
    ``eval-<checkpoint>.json``)."""
    transfer = isinstance(method, MultimodalMethod) and cfg.eval.zero_shot_data
    if splits.num_classes < 2 and not transfer:
        raise ValueError(
            f"evaluation needs at least two classes, but the data set has {splits.num_classes} "
            f"({splits.train.classes}); a multimodal run on caption-only data evaluates "
            "zero-shot on another data set: set eval.zero_shot_data"
        )
    results = _own_data(cfg, method, splits, device, progress) if splits.num_classes > 1 else {}
    if transfer and isinstance(method, MultimodalMethod):
        if progress:
            print(f"zero-shot transfer to {cfg.eval.zero_shot_data}")
        results["zero_shot_transfer"] = zero_shot_transfer(cfg, method, splits, device)
    stem = result_stem("eval", overrides, checkpoint)
    settings = {"eval": config_to_dict(cfg)["eval"], "overrides": list(overrides)}
    path = run_dir / f"{stem}.json"
    keep_previous(path, settings)
    write_json(path, {"results": results, **extra, "settings": settings})
    write_report(run_dir, results, extra, f"{result_stem('report', overrides, checkpoint)}.md")
    if cfg.train.wandb != "off":  # the evaluation as the tracked run's summary, with figures
        _track(cfg, run_dir, stem.removeprefix("eval").strip("-"), results)
    return results


def _online_linear(
    cfg: Config, method: Method, splits: DataSplits, device: str
) -> dict[str, float | None]:
    """Accuracy of the online linear head trained beside the encoder, on val and test."""
    mean, std = splits.normalisation
    return {
        f"linear_{name}_accuracy": online_accuracy(
            method,
            extract_features(
                method.backbone,
                getattr(splits, name),
                mean,
                std,
                device=device,
                workers=cfg.data.workers,
            ),
            getattr(splits, name).labels,
        )
        for name in ("val", "test")
    }


def _trained_heads(
    cfg: Config, method: Method, splits: DataSplits, device: str, progress: bool
) -> dict[str, dict[str, Any]]:
    """The heads trained on augmented images: the augmented probe (Yerxa App. G) and the
    fine-tunings on ``eval.semi_supervised`` fractions of the labels."""
    results: dict[str, dict[str, Any]] = {}
    if not cfg.eval.augmented_probe and not cfg.eval.semi_supervised:
        return results
    spec, d = view_specs(cfg, splits)[0], cfg.data
    if cfg.eval.augmented_probe:
        from ..evaluation.augmented import augmented_linear_probe

        if progress:
            print("the linear probe on augmented images (Yerxa App. G)")
        results["augmented_probe"] = augmented_linear_probe(
            cfg.eval,
            method.backbone,
            splits,
            device,
            spec,
            view_size(cfg, splits),
            cfg.train.seed,
            d.workers,
            d.prefetch,
            d.views_on,
            progress,
        )
    for fraction in cfg.eval.semi_supervised:
        from ..evaluation.finetune import finetune

        if progress:
            print(f"fine-tuning on {fraction:g} of the labels")
        ft = finetune(
            cfg.eval, method.backbone, splits, fraction, spec, device, seed=cfg.train.seed
        )
        results[f"finetune_{fraction:g}"] = {
            "linear_val_accuracy": ft["val_accuracy"],
            "linear_test_accuracy": ft["test_accuracy"],
            "labelled_images": ft["labelled_images"],
        }
    return results


def _track(cfg: Config, run_dir: Path, prefix: str, results: dict[str, dict[str, Any]]) -> None:
    """The evaluation's numbers as the tracked run's summary, with the run's figures."""
    tracked = WandbRun(run_dir, tracking_of(cfg))
    values = {
        "/".join(p for p in ("eval", prefix, row, key) if p): value
        for row, numbers in results.items()
        for key, value in numbers.items()
        if isinstance(value, (int, float))
    }
    tracked.summarise(values, [run_dir / "curves.png", *sorted(run_dir.glob("figures/*.png"))])
    tracked.close()


def _own_data(
    cfg: Config, method: Method, splits: DataSplits, device: str, progress: bool
) -> dict[str, dict[str, Any]]:
    """kNN and linear probe next to the baselines, the online head, zero-shot on the run's
    own classes, the augmented probe and fine-tuning: the evaluation on the run's data."""
    # the same initialisation the pretrained encoder had
    random_encoder = build_method_for(cfg, splits.channels, image_size=view_size(cfg, splits))
    results = evaluate_with_baselines(
        cfg.eval,
        method.backbone,
        splits,
        device,
        random_encoder.backbone,
        progress,
        cfg.data.workers,
    )
    if getattr(method, "online_head", None) is not None:
        results["online_linear"] = _online_linear(cfg, method, splits, device)
    if isinstance(method, MultimodalMethod):
        if progress:
            print("zero-shot classification with held-out prompt templates")
        results["zero_shot"] = {
            **zero_shot(cfg, method, splits, device),
            "chance": 1 / splits.num_classes,
            "templates": zero_shot_prompts(cfg, splits)[1],
        }
    results.update(_trained_heads(cfg, method, splits, device, progress))
    return results


def result_stem(name: str, overrides: Sequence[str], checkpoint: str = "last.pt") -> str:
    """``name`` for the run's own settings, ``name-<the overrides>`` for an evaluation with
    ``--eval.*`` overrides, so that it never replaces the run's own results; a kept checkpoint
    other than ``last.pt`` adds its name (``eval-best.json``)."""
    kept = checkpoint_name(checkpoint).removesuffix(".pt")
    if kept != "last":
        name = f"{name}-{kept}"
    if not overrides:
        return name
    parts = sorted(o.removeprefix("--").removeprefix("eval.") for o in overrides)
    slug = "".join(c if c.isalnum() or c in "._=-" else "_" for c in "_".join(parts))
    if len(slug) > 60:
        slug = slug[:50] + "-" + hashlib.sha1(slug.encode()).hexdigest()[:8]
    return f"{name}-{slug}"


def keep_previous(path: Path, settings: dict[str, Any]) -> None:
    """A result file about to be replaced by one of other ``settings`` (an older protocol, or
    one written before settings were recorded) is moved aside to ``<stem>.<n>.json``, never
    lost; one of the same settings is replaced."""
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text()).get("settings")
    except (ValueError, AttributeError):
        old = None
    if old == settings:
        return
    n = 1
    while path.with_name(f"{path.stem}.{n}{path.suffix}").exists():
        n += 1
    path.rename(path.with_name(f"{path.stem}.{n}{path.suffix}"))


def run_summary(
    cfg: Config, run_dir: Path, step: int, checkpoint: str | None = None
) -> dict[str, object]:
    """What ``eval.json`` and ``report.md`` record beside the results, the same from every
    command: the method, the data set, the checkpoint's step (and name, for a kept checkpoint
    evaluated by ``evaluate --checkpoint``) and its :func:`final_percent_error`."""
    named = {} if checkpoint is None else {"checkpoint": checkpoint}
    return {
        "method": cfg.method.name,
        "dataset": cfg.data.name,
        "steps": step,
        **named,
        "final percent error": final_percent_error(run_dir, step),
    }


def final_percent_error(run_dir: Path, step: int | None = None) -> object:
    """The percent error (Schaeffer Eq. 4, of training-batch centroids) last logged at or
    before ``step`` (None: the run's last), named with its step: a checkpoint's own (``best.pt``
    is not the last step's); ``-`` when none was logged by then."""
    rows = [
        r
        for r in read_metrics(run_dir / "metrics.jsonl")
        if "percent_error" in r and (step is None or int(r["step"]) <= step)
    ]
    if not rows:
        return "-"
    row = rows[-1]
    at = f"step {row['step']}"
    if step is not None and int(row["step"]) != step:  # logged every train.log_every steps
        at += f", the last logged before this checkpoint's step {step}"
    return f"{100 * row['percent_error']:.2f}% (batch centroids, {at})"
