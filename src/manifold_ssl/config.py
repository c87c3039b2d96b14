"""One typed source of truth for a run: dataclass defaults, then a YAML recipe, then
``--key=value`` overrides. Unknown keys are errors; the resolved config is saved with the run.

Derived values are computed here and only here: :func:`effective_lr` (the learning-rate scaling
rule) and :func:`resolve_device`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "Config",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "effective_lr",
    "list_recipes",
    "load_recipe",
]

RECIPE_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class DataConfig:
    name: str = "digits"  # digits | cifar10 | cifar100 | stl10 | imagefolder
    root: str = "data"  # raw files and the decoded tensor cache
    path: str | None = None  # imagefolder: a folder or .tar(.gz) of <split>/<class>/<image>
    val_fraction: float = 0.1  # held out of train for selection; test is for final numbers
    split_seed: int = 0


@dataclass
class ViewsConfig:
    preset: str = "digits"  # see manifold_ssl.data.views.PRESETS
    num_views: int = 4  # K


@dataclass
class ModelConfig:
    backbone: str = "convnet"
    width: int | None = None  # channels of the first stage (None: 64 ResNet, 32 ConvNet)
    small_images: bool = True  # CIFAR stem (3×3, no max-pool)
    projector: str = "256-128"
    predictor: str = ""
    sync_bn: bool = False  # SyncBatchNorm under DDP (global batch statistics)


@dataclass
class MethodConfig:
    name: str = "mmcr"
    momentum: float = 0.0  # base EMA coefficient of the target network (0: none)
    loss: dict[str, Any] = field(default_factory=dict)  # hyperparameters of the objective


@dataclass
class OptimConfig:
    name: str = "adam"  # lars | sgd | adam | adamw
    lr: float = 1e-3  # base learning rate, at ref_batch when lr_scaling != none
    lr_scaling: str = "none"  # none | linear (lr·B/ref_batch) | sqrt (lr·√(B/ref_batch))
    ref_batch: int = 256
    weight_decay: float = 1e-6
    momentum: float = 0.9  # SGD/LARS momentum
    lars_eta: float = 0.001  # LARS trust coefficient
    warmup_epochs: float = 0.0
    warmup_steps: int = 0  # warmup in optimiser steps instead (CLAMP: 10); not with warmup_epochs
    schedule: str = "cosine"  # cosine | constant (after warmup)
    min_lr_ratio: float = 0.0  # final lr / peak lr of the cosine


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128  # global batch (split over ranks under DDP)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on CUDA (spectra stay float64); ignored on CPU
    num_threads: int = 0  # torch CPU threads (0: leave as is)
    log_every: int = 10  # steps between metric lines
    knn_every: int = 5  # epochs between kNN monitors on the validation split (0: never)
    checkpoint_every: int = 1  # epochs between checkpoints
    max_steps: int = 0  # stop after this many steps (0: all epochs)
    time_budget_s: float = 0.0  # stop (and checkpoint) after this wall time (0: none)
    out_dir: str = "runs"
    name: str = ""  # run name (default: <method>-<dataset>)
    tensorboard: bool = False


@dataclass
class EvalConfig:
    knn_k: int = 200
    knn_temperature: float = 0.1
    linear_probe: bool = True
    linear_weight_decays: list[float] = field(
        default_factory=lambda: [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    )
    linear_max_iter: int = 300
    baselines: bool = True  # random-init encoder and raw pixels next to the result
    semi_supervised: list[float] = field(default_factory=list)  # label fractions, e.g. [0.01, 0.1]
    finetune_epochs: int = 20
    finetune_lr: float = 0.1


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# --------------------------------------------------------------------------- (de)serialisation
def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _suggest(key: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (int → float allowed)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ValueError:
                continue
        raise ValueError(f"config key {key!r} expects {tp}, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {key!r} expects a list, got {value!r}")
        (arg,) = typing.get_args(tp)
        return [_coerce(v, arg, key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config key {key!r} expects a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config key {key!r} expects a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"config key {key!r} must be finite, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config key {key!r} expects an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"config key {key!r} expects true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"config key {key!r} expects a string, got {value!r}")
        return value
    return value


def _update_section(obj: Any, values: dict[str, Any], prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in names:
            raise ValueError(f"unknown config key {full!r}{_suggest(key, names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"config key {full!r} is a section; got {value!r}")
            _update_section(current, value, full)
        else:
            setattr(obj, key, _coerce(value, hints[key], full))


def config_from_dict(values: dict[str, Any], base: Config | None = None) -> Config:
    """A :class:`Config` from nested ``values`` over ``base`` (defaults); strict about keys."""
    cfg = base if base is not None else Config()
    _update_section(cfg, values or {}, "")
    validate(cfg)
    return cfg


def _parse_value(text: str) -> Any:
    """``--key=value`` values are YAML scalars or lists: 0.1, true, null, [0.01, 0.1], cifar10."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(cfg: Config, overrides: typing.Sequence[str]) -> Config:
    """Apply ``["section.key=value", ...]`` (a leading ``--`` is allowed)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        text = item[2:] if item.startswith("--") else item
        if "=" not in text:
            raise ValueError(f"override {item!r} must look like --section.key=value")
        key, value = text.split("=", 1)
        parts = key.split(".")
        if len(parts) < 2:
            raise ValueError(f"override {item!r} must name a section, e.g. --optim.lr=0.1")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _parse_value(value)
    return config_from_dict(nested, cfg)


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str | None) -> Config:
    """Defaults updated by a recipe: a path to a YAML file, or the name of a packaged recipe."""
    if name_or_path is None:
        return config_from_dict({})
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPE_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise ValueError(
            f"recipe {name_or_path!r} not found; expected a YAML path or one of {list_recipes()}"
        )
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"recipe {path} must be a mapping of sections")
    return config_from_dict(values)


_CHOICES = {
    ("optim", "name"): ("lars", "sgd", "adam", "adamw"),
    ("optim", "lr_scaling"): ("none", "linear", "sqrt"),
    ("optim", "schedule"): ("cosine", "constant"),
}


def validate(cfg: Config) -> None:
    for (section, key), options in _CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        if value not in options:
            raise ValueError(f"{section}.{key} must be one of {list(options)}, got {value!r}")
    positive = {
        "train.epochs": cfg.train.epochs,
        "train.batch_size": cfg.train.batch_size,
        "views.num_views": cfg.views.num_views,
        "optim.ref_batch": cfg.optim.ref_batch,
        "eval.knn_k": cfg.eval.knn_k,
    }
    for key, value in positive.items():
        if value < 1:
            raise ValueError(f"{key} must be >= 1, got {value}")
    if cfg.optim.warmup_steps < 0 or cfg.optim.warmup_epochs < 0:
        raise ValueError("optim.warmup_steps and optim.warmup_epochs must be >= 0")
    if cfg.optim.warmup_steps and cfg.optim.warmup_epochs:
        raise ValueError(
            "give one of optim.warmup_steps and optim.warmup_epochs, not both "
            f"(got {cfg.optim.warmup_steps} steps and {cfg.optim.warmup_epochs} epochs)"
        )
    if cfg.optim.lr <= 0:
        raise ValueError(f"optim.lr must be > 0, got {cfg.optim.lr}")
    if not 0 <= cfg.data.val_fraction < 1:
        raise ValueError(f"data.val_fraction must be in [0, 1), got {cfg.data.val_fraction}")
    if cfg.views.num_views < 2:
        raise ValueError(
            f"views.num_views must be >= 2 (K views per image), got {cfg.views.num_views}"
        )
    for f in cfg.eval.semi_supervised:
        if not 0 < f <= 1:
            raise ValueError(f"eval.semi_supervised fractions must be in (0, 1], got {f}")


def effective_lr(cfg: Config) -> float:
    """The peak learning rate: ``optim.lr`` scaled by the global batch (the one place it is)."""
    ratio = cfg.train.batch_size / cfg.optim.ref_batch
    scale = {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[cfg.optim.lr_scaling]
    return cfg.optim.lr * scale


def save_config(cfg: Config, path: str | Path) -> None:
    from .runinfo import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
