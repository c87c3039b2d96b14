"""One typed source of truth for a run: dataclass defaults, then a YAML recipe, then
``--key=value`` overrides. Unknown keys are errors; the resolved config is saved with the run.

Derived values are computed here and only here: :func:`effective_lr` (the learning-rate scaling
rule).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib
import math
import os
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ._keys import (
    Check,
    Entries,
    OneOf,
    Text,
    above,
    at_least,
    between,
    check_settings,
    device_name,
    dump_yaml,
    key,
    list_of,
    load_yaml,
    one_of,
    settings_help,
    update_settings,
    value_text,
)
from .evaluation.settings import EvalConfig
from .probes.settings import ProbesConfig

__all__ = [
    "Config",
    "apply_overrides",
    "config_from_dict",
    "config_help",
    "config_to_dict",
    "effective_lr",
    "list_recipes",
    "load_recipe",
    "read_overrides",
]

RECIPE_DIR = Path(__file__).resolve().parent / "configs"


# --------------------------------------------------------------------------- field checks
# key() and the generic checks live in the leaf module _keys (sections defined beside their
# readers use them too); the checks that look names up in the registries are here.
def registered(module: str, table: str) -> Check:
    """One of the names of a registry, looked up when checked (no import at definition)."""

    return OneOf(lambda: sorted(getattr(importlib.import_module(module), table)), close=True)


def _backbone_name(v: str) -> str | None:
    from .models import backbone_problem

    return backbone_problem(v)


def _method_names() -> list[str]:
    from .methods import METHODS, MULTIMODAL

    return sorted({*METHODS, *MULTIMODAL})


_method_name = OneOf(_method_names, close=True)


def _data_path_problem(v: object) -> str | None:
    from .data.paths import path_problem

    return path_problem(v)


def _read_data_path(text: str) -> Any:
    from .data.paths import read_path

    return read_path(text)


@dataclass
class DataConfig:
    name: str = key("digits", "dataset", registered("manifold_ssl.data.datasets", "DATASETS"))
    root: str = key("data", "folder of raw files and the decoded tensor cache")
    path: str | dict[str, str] | None = key(
        None,
        "imagefolder: a folder or .tar(.gz) of <split>/<class>/<image>; webdataset: a shard "
        "pattern with {split}, e.g. shards/{split}-{000000..000099}.tar, local or remote "
        "(https://host/{split}-{000000..000099}.tar, 'pipe:aws s3 cp s3://b/{split}-{0..9}.tar -'), "
        "or a mapping from split to pattern ('{train: tr-{0000..1023}.tar, test: te-{0..7}.tar}'); "
        "splits that read the same files are refused",
        lambda v: _data_path_problem(v),
        parse=lambda text: _read_data_path(text),
    )
    loader: str = key(
        "auto",
        "memory (one uint8 tensor on the device) | stream (DataLoader workers decode files) | "
        "resampled (shards read in order, drawn with replacement: remote shards) | auto "
        "(resampled for a remote data.path; stream an imagefolder/webdataset larger than "
        "memory_limit_gb)",
        one_of("auto", "memory", "stream", "resampled"),
    )
    image_size: int | None = key(
        None,
        "training resolution; memory: images resized once into the cache (downsampling)",
        lambda v: None if v is None or v >= 8 else ">= 8 or null",
    )
    crop_fraction: float = key(
        1.0,
        "un-augmented view: shorter side to image_size/crop_fraction, centre crop (ImageNet: "
        "0.875)",
        between(0, 1, lo_open=True),
    )
    classes_file: str | None = key(
        None, "keep the classes listed in this file, one per line (ImageNet-100)"
    )
    test_split: str = key("test", "split with the final numbers (ImageNet folders: val)")
    unlabeled: bool = key(False, "also pretrain on the unlabeled split (STL-10: 100,000 images)")
    workers: int = key(-1, "stream: DataLoader workers (-1: one per core, at most 8)", at_least(-1))
    prefetch: int = key(2, "stream: batches each worker reads ahead", at_least(1))
    views_on: str = key(
        "auto",
        "stream: photometric part of the views on the device, or in the workers (auto: the "
        "workers when the device is the CPU)",
        one_of("auto", "device", "workers"),
    )
    memory_limit_gb: float = key(
        8.0, "auto: decoded training images above this many GB are streamed", above(0)
    )
    samples_per_epoch: int = key(
        0, "resampled: samples (global) that make an epoch; required for it", at_least(0)
    )
    streams: int = key(
        8,
        "resampled: independent shard streams per process, read by the workers; the batches "
        "depend on it and on the seed, not on data.workers",
        at_least(1),
    )
    shuffle_buffer: int = key(1000, "resampled: samples each stream shuffles among", at_least(1))
    shuffle_initial: int = key(
        100,
        "resampled: samples a stream's buffer holds before it gives its first (then it grows "
        "to shuffle_buffer, reading two samples for each one it gives)",
        at_least(1),
    )
    eval_shards: int = key(
        16,
        "remote data.path without data.eval_path: training shards (a seeded choice) fetched "
        "once into <root>/cache/shards for the labelled training images of the evaluation, "
        "monitor and probes (0: every training shard); the test split's shards are all fetched",
        at_least(0),
    )
    shard_errors: str = key(
        "raise",
        "resampled: a shard that cannot be read (or is truncated) stops the run (raise) or is "
        "skipped, reported and counted (skip); the same for the evaluation's one-time fetch",
        one_of("raise", "skip"),
    )
    eval_path: str | dict[str, str] | None = key(
        None,
        "remote data.path: a local copy the evaluation and monitors read by random access, a "
        "pattern or a mapping as data.path (null: the test split's shards and data.eval_shards "
        "training shards are fetched once into <root>/cache/shards)",
        lambda v: _data_path_problem(v),
        parse=lambda text: _read_data_path(text),
    )
    val_fraction: float = key(
        0.1,
        "fraction of train held out to monitor and select (the test split is for final numbers)",
        between(0, 1, lo_open=True, hi_open=True),
    )
    split_seed: int = key(0, "seed of the stratified validation split")


@dataclass
class ViewsConfig:
    preset: str = key(
        "digits", "augmentation preset", registered("manifold_ssl.data.views", "PRESETS")
    )
    num_views: int = key(
        4, "K views per image (multimodal methods: 1, the caption is the other)", at_least(1)
    )


@dataclass
class ModelConfig:
    backbone: str = key(
        "convnet",
        "backbone: a name here, torchvision:<name> or timm:<name>",
        lambda v: _backbone_name(v),
    )
    width: int | None = key(
        None,
        "channels of the first stage (null: 64 for ResNets, 32 for the ConvNet)",
        lambda v: None if v is None or v >= 1 else ">= 1 or null",
    )
    small_images: bool = key(True, "CIFAR stem (3x3, no max-pool) on ResNets")
    kwargs: dict[str, Any] = key(
        help="torchvision:/timm: constructor keywords, e.g. {patch_size: 4} (ViT image size: "
        "data.image_size)",
        factory=dict,
    )
    projector: str = key("256-128", "projector MLP widths, e.g. 2048-512-128 ('' for none)")
    predictor: str = key("", "predictor MLP widths (BYOL, SimSiam, Matrix-SSL)")
    sync_bn: bool = key(False, "BatchNorm over the global batch under DDP")


@dataclass
class MethodConfig:
    name: str = key(
        "mmcr", "method (multimodal_mmcr and clip train on image-caption pairs)", _method_name
    )
    momentum: float = key(
        0.0, "base EMA coefficient of the target network (0: none)", between(0, 1, hi_open=True)
    )
    ema: str = key(
        "auto",
        "EMA coefficient over training: auto (the method's authors': cosine to 1 for BYOL and "
        "Matrix-SSL, constant for MMCR) | cosine | constant (lightly's benchmarks)",
        one_of("auto", "cosine", "constant"),
    )
    loss: dict[str, Any] = key(
        help="hyperparameters of the objective, each method's with its defaults below "
        "(--method.loss.KEY=VALUE sets one, keeping the others)",
        factory=dict,
    )


@dataclass
class TextConfig:
    """The text side of multimodal methods (``method.name: multimodal_mmcr | clip``)."""

    captions: str = key(
        "auto",
        "generated (class + attributes measured from the image) | files (<key>.txt beside each "
        "image) | auto (files for imagefolder/webdataset, else generated)",
        one_of("auto", "generated", "files"),
    )
    width: int = key(64, "text transformer width (OpenCLIP's TextTransformer)", at_least(1))
    layers: int = key(2, "text transformer layers", at_least(1))
    heads: int = key(4, "attention heads (dividing width)", at_least(1))
    context_length: int = key(24, "tokens per caption (longer ones are truncated)", at_least(3))
    zero_shot_templates: list[str] = key(
        help="zero-shot prompts, each with {label} (empty: the held-out templates of "
        "manifold_ssl.data.captions)",
        check=list_of(lambda v: None if "{label}" in v else "a template containing {label}"),
        factory=list,
    )
    class_names: list[str] = key(
        help="zero-shot class words in label order (empty: the dataset's class names; needed "
        "where those are ids, such as WebDataset .cls numbers, and the captions are files)",
        factory=list,
    )


@dataclass
class OptimConfig:
    name: str = key("adam", "optimiser", one_of("lars", "sgd", "adam", "adamw"))
    lr: float = key(1e-3, "base learning rate (at ref_batch when lr_scaling is not none)", above(0))
    lr_scaling: str = key(
        "none",
        "none | linear (lr*B/ref_batch) | sqrt (lr*sqrt(B/ref_batch))",
        one_of("none", "linear", "sqrt"),
    )
    ref_batch: int = key(256, "batch size at which lr is given", at_least(1))
    weight_decay: float = key(1e-6, "weight decay (not on biases and norms)", at_least(0))
    decay_all: bool = key(
        False, "weight decay on biases and norm parameters too (lightly's benchmarks: SGD on all)"
    )
    momentum: float = key(0.9, "SGD/LARS momentum", between(0, 1, hi_open=True))
    lars_eta: float = key(0.001, "LARS trust coefficient", above(0))
    warmup_epochs: float = key(0.0, "linear warmup, in epochs", at_least(0))
    warmup_steps: int = key(
        0,
        "linear warmup in optimiser steps instead (CLAMP: 10); not with warmup_epochs",
        at_least(0),
    )
    schedule: str = key(
        "cosine",
        "after warmup: cosine (per step) | cosine_epoch (per epoch: CosineAnnealingLR(epochs) "
        "stepped at epoch ends, as lightly's benchmarks) | constant",
        one_of("cosine", "cosine_epoch", "constant"),
    )
    min_lr_ratio: float = key(0.0, "final lr / peak lr of the cosine", between(0, 1))


@dataclass
class TrainConfig:
    epochs: int = key(30, "epochs", at_least(1))
    batch_size: int = key(128, "global batch (split over ranks under DDP)", at_least(1))
    seed: int = key(0, "seed of the model, data order and views")
    device: str = key("auto", "auto | cpu | cuda | cuda:N | mps", device_name)
    amp: bool = key(True, "bf16 autocast on CUDA (spectra stay float64); see amp_cpu")
    amp_cpu: bool = key(False, "bf16 autocast on the CPU too (slow on most CPUs; for tests)")
    channels_last: bool = key(False, "views and weights in channels-last memory (faster convs)")
    compile: bool | str = key(
        False,
        "torch.compile: true (the model, in place) | step (the whole step as one graph: "
        "forward, backward, optimiser, EMA, online head; a CUDA graph on CUDA; one process) "
        "| false",
        lambda v: None if v is True or v is False or v == "step" else "true, false or step",
        parse=lambda text: {"true": True, "false": False}.get(text.strip().lower(), text),
    )
    compile_backend: str = key(
        "inductor",
        "train.compile's backend: inductor | aot_eager (the graph without a compiler)",
        one_of("inductor", "aot_eager"),
    )
    num_threads: int = key(0, "torch CPU threads (0: leave as is)", at_least(0))
    log_every: int = key(10, "steps between metric lines", at_least(1))
    knn_every: int = key(
        5, "epochs between kNN monitors on the validation split (0: never)", at_least(0)
    )
    checkpoint_every: int = key(1, "epochs between checkpoints", at_least(1))
    checkpoint_every_steps: int = key(
        0, "also checkpoint every this many steps (0: at epoch ends only)", at_least(0)
    )
    keep_every: int = key(
        0,
        "keep checkpoints/epoch-<N>.pt every this many epochs beside last.pt (0: none); "
        "analyze RUN --checkpoints all measures them",
        at_least(0),
    )
    keep_limit: int = key(
        0, "keep at most this many epoch-<N>.pt, the newest (0: all)", at_least(0)
    )
    keep_best: str = key(
        "none",
        "keep checkpoints/best.pt at the best monitor value: none | knn (knn_val_accuracy) | "
        "online (online_linear_val_accuracy); needs train.knn_every",
        one_of("none", "knn", "online"),
    )
    max_steps: int = key(0, "stop after this many steps (0: all epochs)", at_least(0))
    time_budget_s: float = key(
        0.0,
        "stop (and checkpoint) after this many seconds of training in this invocation (the "
        "training clock: monitor, probes and checkpoints excluded; 0: none)",
        at_least(0),
    )
    out_dir: str = key("runs", "parent folder of run directories")
    name: str = key("", "run name (default: <method>-<dataset>)")
    tensorboard: bool = key(False, "also log to TensorBoard")
    wandb: str = key(
        "off",
        "also log to Weights & Biases: off | online | offline (files under <run>/wandb, synced "
        "later with wandb sync); extra manifold-ssl[wandb]",
        one_of("off", "online", "offline"),
    )
    wandb_project: str = key("manifold-ssl", "Weights & Biases project")
    wandb_group: str = key("", "Weights & Biases group (a sweep's trials: the sweep's name)")
    online_linear: bool = key(
        True,
        "train a linear head on the detached backbone features of the labelled training "
        "images as they pass (the online probe of solo-learn and lightly); its accuracy is "
        "logged with the kNN monitor and reported beside the offline probe",
    )
    online_lr: float = key(0.1, "online linear head: SGD learning rate (momentum 0.9)", above(0))


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    text: TextConfig = field(default_factory=TextConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    probes: ProbesConfig = field(default_factory=ProbesConfig)


def config_help() -> str:
    """Every config key with its default and help, one line each (for ``pretrain --help``),
    and under ``method.loss`` every method's objective keywords with their defaults."""
    from .methods import METHODS, MULTIMODAL

    lines = settings_help(Config())
    at = next(i for i, line in enumerate(lines) if line.startswith("  --method.loss="))
    losses = [
        f"      {name}: "
        + (", ".join(f"{k}={value_text(v)}" for k, v in loss_keywords(name).items()) or "none")
        for name in sorted({*METHODS, *MULTIMODAL})
    ]
    return "\n".join([*lines[: at + 1], *losses, *lines[at + 1 :]])


def loss_keywords(method: str) -> dict[str, Any]:
    """The keywords ``method.loss`` may set for ``method``: its objective's constructor
    keywords (the loss registry, :data:`manifold_ssl.losses.LOSSES`) with their defaults."""
    import inspect

    from .losses import LOSSES
    from .methods import METHODS, MULTIMODAL

    name = METHODS[method].loss if method in METHODS else MULTIMODAL[method]
    params = inspect.signature(LOSSES[name]).parameters.values()
    return {
        p.name: p.default
        for p in params
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.default is not p.empty
    }


# --------------------------------------------------------------------------- (de)serialisation
def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_dict(values: dict[str, Any], base: Config | None = None) -> Config:
    """A :class:`Config` from nested ``values`` over ``base`` (defaults); strict about keys.
    ``base`` itself is left unchanged, also when a value is rejected."""
    cfg = copy.deepcopy(base) if base is not None else Config()
    update_settings(cfg, values or {})
    validate(cfg)
    return cfg


def apply_overrides(cfg: Config, overrides: typing.Sequence[str]) -> Config:
    """Apply ``["section.key=value", ...]`` (a leading ``--`` is allowed)."""
    return config_from_dict(read_overrides(overrides), cfg)


def read_overrides(overrides: typing.Sequence[str]) -> dict[str, Any]:
    """``["section.key=value", ...]`` as the nested values :func:`config_from_dict` takes.
    Each value is the text as typed, read by its key's type when set
    (:func:`manifold_ssl._keys.read_text`: a string key takes it as it is, ``off`` too); a
    dotted path into a mapping key (``method.loss.nuclear=polar``) sets that entry and keeps
    the others."""
    nested = Entries()
    for item in overrides:
        text = item[2:] if item.startswith("--") else item
        if "=" not in text:
            raise ValueError(f"override {item!r} must look like --section.key=value")
        key, value = text.split("=", 1)
        parts = key.split(".")
        if len(parts) < 2:
            raise ValueError(f"override {item!r} must name a section, e.g. --optim.lr=0.1")
        node = nested
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, Entries())
            if not isinstance(node, Entries):
                given = ".".join(parts[: i + 1])
                raise ValueError(
                    f"override {item!r} sets an entry of {given}, given whole by another "
                    f"override: give {given} whole or by entries, not both"
                )
        node[parts[-1]] = Text(value)
    return nested


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def read_packaged_yaml(
    name_or_path: str, folder: Path, what: str, available: list[str]
) -> tuple[Path, dict[str, Any]]:
    """A YAML mapping from a path, or the packaged ``folder/<name>.yaml``; ``what`` names it in
    errors (a missing file lists ``available``, a syntax error gives the parser's message)."""
    path = Path(name_or_path)
    if not path.is_file() and path.suffix not in (".yaml", ".yml"):
        # a packaged name, else the path with .yaml added (configs/my_recipe)
        packaged, local = folder / f"{path.name}.yaml", path.with_name(f"{path.name}.yaml")
        bare = os.sep not in name_or_path and "/" not in name_or_path
        path = packaged if bare and packaged.exists() else local
    if not path.exists():
        raise ValueError(
            f"{what} {name_or_path!r} not found; expected a YAML path or one of {available}"
        )
    try:
        values = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{what} {path} is not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{what} {path} must be a mapping")
    return path, values


#: Keys a resumed run may change: where it stops and how it reads its data, not what it
#: computes (a section name frees the whole section).
RESUME_FREE_KEYS = (
    "train.max_steps",
    "train.time_budget_s",
    "data.workers",
    "data.prefetch",
    "data.views_on",
    "data.shard_errors",
    "train.wandb",
    "train.wandb_project",
    "train.wandb_group",
)
#: Keys an evaluation of a run may change beside those: the protocol, the zero-shot words and
#: where it runs. The rest is fixed by the checkpoint.
EVAL_FREE_KEYS = (*RESUME_FREE_KEYS, "eval", "text.class_names", "text.zero_shot_templates")


def differing_keys(a: Config, b: Config, free: typing.Sequence[str] = ()) -> list[str]:
    """The dotted keys whose values differ between ``a`` and ``b``, those in ``free`` (dotted
    keys or whole sections) left out: the one rule for what a resume or an evaluation of a run
    may change (:data:`RESUME_FREE_KEYS`, :data:`EVAL_FREE_KEYS`)."""
    da, db = config_to_dict(a), config_to_dict(b)
    return [
        f"{section}.{name}"
        for section in da
        for name in da[section]
        if da[section][name] != db[section].get(name)
        and section not in free
        and f"{section}.{name}" not in free
    ]


def is_free(override: str, free: typing.Sequence[str]) -> bool:
    """Whether a ``--section.key=value`` override sets a key of ``free``."""
    dotted = override.removeprefix("--").partition("=")[0]
    return dotted in free or dotted.partition(".")[0] in free


def load_recipe(name_or_path: str | None) -> Config:
    """Defaults updated by a recipe: a path to a YAML file, or the name of a packaged recipe."""
    if name_or_path is None:
        return config_from_dict({})
    _, values = read_packaged_yaml(name_or_path, RECIPE_DIR, "recipe", list_recipes())
    return config_from_dict(values)


def validate(cfg: Config) -> None:
    """Check every key with the check defined beside it, then the rules that tie keys together;
    errors name the key and what was expected."""
    check_settings(cfg)
    from .methods import MULTIMODAL

    multimodal = cfg.method.name in MULTIMODAL
    if multimodal and cfg.views.num_views != 1:
        raise ValueError(
            f"method {cfg.method.name} pairs one image view with its caption: set "
            f"views.num_views to 1, got {cfg.views.num_views}"
        )
    if multimodal and cfg.probes.every_steps:
        raise ValueError(
            "probes.every_steps: the training probes measure the objective on image views; "
            f"they do not support the image-caption method {cfg.method.name} (set it to 0)"
        )
    if not multimodal and cfg.views.num_views < 2:
        raise ValueError(
            f"method {cfg.method.name} needs views.num_views >= 2, got {cfg.views.num_views}"
        )
    if not multimodal and cfg.views.num_views != 2:
        from .methods import METHODS

        if METHODS[cfg.method.name].layout != "views":  # pair / predict: views 0 and 1
            raise ValueError(
                f"method {cfg.method.name} takes exactly 2 views: set views.num_views to 2, "
                f"got {cfg.views.num_views}"
            )
    _check_loss_keys(cfg.method.name, cfg.method.loss)
    if cfg.text.width % cfg.text.heads:
        raise ValueError(
            f"text.width {cfg.text.width} must be divisible by text.heads {cfg.text.heads}"
        )
    _check_resampled(cfg, multimodal)
    if cfg.train.keep_best != "none" and not cfg.train.knn_every:
        raise ValueError(
            f"train.keep_best={cfg.train.keep_best} keeps the checkpoint of the best monitor "
            "value: set train.knn_every to the epochs between monitors"
        )
    if cfg.train.keep_best == "online" and not cfg.train.online_linear:
        raise ValueError("train.keep_best=online needs the online head: train.online_linear=true")
    if cfg.optim.warmup_steps and cfg.optim.warmup_epochs:
        raise ValueError(
            "give one of optim.warmup_steps and optim.warmup_epochs, not both "
            f"(got {cfg.optim.warmup_steps} steps and {cfg.optim.warmup_epochs} epochs)"
        )


def _check_loss_keys(method: str, values: dict[str, Any]) -> None:
    """``method.loss``'s keys against the keywords of the method's objective (its class's
    constructor in the loss registry, :data:`manifold_ssl.losses.LOSSES`), before anything is
    built; an unknown one is named with the closest keywords, as any unknown key is."""
    import inspect

    from .losses import LOSSES
    from .methods import METHODS, MULTIMODAL

    name = METHODS[method].loss if method in METHODS else MULTIMODAL[method]
    cls = LOSSES[name]
    params = inspect.signature(cls).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    keywords = sorted(p.name for p in params if p.kind is not p.VAR_POSITIONAL)
    for given in values:
        if given not in keywords:
            close = difflib.get_close_matches(str(given), keywords, n=3)
            hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
            raise ValueError(
                f"unknown config key 'method.loss.{given}' for the {name} loss "
                f"({cls.__name__}){hint}; its keys: {', '.join(keywords) or 'none'}"
            )


def resampled(cfg: Config) -> bool:
    """Whether the pretraining batches come from the resampled shard reader."""
    from .data.remote import is_remote

    d = cfg.data
    return d.loader == "resampled" or (d.loader == "auto" and is_remote(d.path))


def _check_resampled(cfg: Config, multimodal: bool) -> None:
    from .data.remote import is_remote

    d = cfg.data
    if d.test_split == "train":
        raise ValueError(
            "data.test_split=train would measure the final numbers on the training images: "
            "name another split (test, val)"
        )
    if isinstance(d.path, dict) and d.name != "webdataset":
        raise ValueError(
            f"data.path as a mapping from split to pattern is for webdataset shards; {d.name} "
            "takes one path (imagefolder: <path>/<split>/<class>/<image>)"
        )
    if is_remote(d.path) and d.name != "webdataset":
        raise ValueError(f"data.path {d.path!r} is remote: data.name must be webdataset")
    if is_remote(d.path) and d.loader in ("memory", "stream"):
        raise ValueError(
            f"data.loader={d.loader} reads by random access; remote shards ({d.path}) are "
            "read by data.loader=resampled (or auto)"
        )
    if not resampled(cfg):
        # keys of the resampled reader only: a random-access run would ignore them
        if d.samples_per_epoch:
            raise ValueError(
                f"data.samples_per_epoch={d.samples_per_epoch} sets the epoch of "
                "data.loader=resampled; this run reads its training images by random access "
                f"(data.loader={d.loader}), an epoch being every image: leave it 0, or set "
                "data.loader=resampled"
            )
        if d.shard_errors != "raise":
            raise ValueError(
                f"data.shard_errors={d.shard_errors} is for shards read in order "
                "(data.loader=resampled); local shards read by random access are indexed "
                f"before training (data.loader={d.loader}), where an unreadable or truncated "
                "shard is an error naming it: replace the shard, or set data.loader=resampled"
            )
        return
    if d.name != "webdataset":
        raise ValueError(f"data.loader=resampled reads WebDataset shards, not {d.name}")
    if d.samples_per_epoch < cfg.train.batch_size:
        raise ValueError(
            "data.loader=resampled draws shards with replacement and has no epoch of its own: "
            f"set data.samples_per_epoch (at least train.batch_size {cfg.train.batch_size}), "
            f"got {d.samples_per_epoch}"
        )
    if multimodal or d.unlabeled:
        raise ValueError(
            "data.loader=resampled pretrains image methods on the labelled training shards "
            f"(not {'an image-caption method' if multimodal else 'data.unlabeled'})"
        )


def effective_lr(cfg: Config) -> float:
    """The peak learning rate: ``optim.lr`` scaled by the global batch (the one place it is)."""
    ratio = cfg.train.batch_size / cfg.optim.ref_batch
    scale = {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[cfg.optim.lr_scaling]
    return cfg.optim.lr * scale


def save_config(cfg: Config, path: str | Path) -> None:
    """Write ``cfg`` as a run's ``config.yaml`` (atomically): :func:`read_run_config` reads it."""
    from ._atomic import atomic_write_text

    atomic_write_text(path, dump_yaml(config_to_dict(cfg), sort_keys=False))


def read_run_config(run_dir: str | Path, without: Iterable[str] = ()) -> Config:
    """The config a run directory was started with (its ``config.yaml``), with the dotted keys
    ``without`` back at their defaults (a resume drops the stop conditions of the invocation
    that gave them); an error naming the directory when it is not a run's."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ValueError(f"{run_dir} is not a run directory (no config.yaml)")
    saved = load_yaml(path.read_text()) or {}
    for dotted in without:
        section, _, key = dotted.partition(".")
        saved.get(section, {}).pop(key, None)
    return config_from_dict(saved)
