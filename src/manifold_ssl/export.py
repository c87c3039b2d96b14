"""A pretrained backbone as a plain state dict that other codebases load.

``manifold-ssl export RUN --format torchvision|timm|state_dict --out FILE`` writes

* ``torchvision``: the keys of ``torchvision.models.get_model(name)`` without its classifier,
  so that ``model.load_state_dict(sd, strict=False)`` reports only the classifier missing;
* ``timm``: the keys of ``timm.create_model(name)``, likewise;
* ``state_dict``: the backbone's own keys (any backbone);
* ``open_clip``: a multimodal run's image and text towers as an OpenCLIP ``CustomTextCLIP``
  (a ``timm:<name>`` image tower with a linear projection, OpenCLIP's text transformer), with
  its model config ``NAME.json`` beside ``NAME.pt``: ``open_clip.add_model_config`` of that
  file, then ``open_clip.create_model_and_transforms(NAME, pretrained=NAME.pt, image_mean=…,
  image_std=…, image_interpolation="bilinear")`` with the run's view of an image (the
  checkpoint's ``preprocess``), so that OpenCLIP's ``preprocess`` is the run's.

A backbone from the same library is written as it is. ResNets cross over: torchvision's and
timm's ResNets share their key names, and the ResNets written here map onto them at width 64
(``stem.0`` → ``conv1``, ``stages.k.b`` → ``layer{k+1}.b``, ``shortcut`` → ``downsample``, a
Bottleneck's ``body`` → ``conv1``…``bn3``). Beside ``FILE``, ``FILE.json`` records the library,
model name, constructor keywords, input channels and whether the CIFAR stem is applied
(``manifold_ssl.models.cifar_stem`` on a fresh model before loading), with a snippet that loads
it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ._keys import given, key, one_of
from .config import Config, config_from_dict
from .run.record import RunDir, checkpoint_name
from .runinfo import atomic_write_text
from .training.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["FORMATS", "ExportConfig", "export_backbone", "export_state"]

FORMATS = ("torchvision", "timm", "state_dict", "open_clip")


@dataclass
class ExportConfig:
    """The settings of ``manifold-ssl export RUN`` (``--format timm`` or
    ``--export.format=timm``): the arguments of :func:`export_backbone`."""

    format: str | None = key(None, f"one of {list(FORMATS)} (required)", one_of(*FORMATS))
    out: str | None = key(
        None,
        "the .pt file to write, or a folder (DIR/ or no suffix) for RUN-FORMAT.pt (required)",
        given,
    )
    checkpoint: str = key("last", "of a run directory: last, best, epoch-<N> (train.keep_*)", given)
    overwrite: bool = key(False, "replace an existing --out file")


_RESNETS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3), "resnet50": (3, 4, 6, 3)}


def _backbone_state(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        k.removeprefix("backbone."): v for k, v in model_state.items() if k.startswith("backbone.")
    }


_BOTTLENECK = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2", "6": "conv3", "7": "bn3"}


def _own_resnet_to_library(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of the ResNets written here → torchvision/timm ResNet keys."""
    out = {}
    for name, value in state.items():
        new = re.sub(r"^stem\.0\.", "conv1.", name)
        new = re.sub(r"^stem\.1\.", "bn1.", new)
        m = re.match(r"^stages\.(\d+)\.(\d+)\.(.*)$", new)
        if m:
            stage, block, rest = int(m.group(1)), m.group(2), m.group(3)
            rest = rest.replace("shortcut.", "downsample.")
            b = re.match(r"^body\.(\d+)\.(.*)$", rest)
            if b:
                rest = f"{_BOTTLENECK[b.group(1)]}.{b.group(2)}"
            new = f"layer{stage + 1}.{block}.{rest}"
        out[new] = value
    return out


def export_state(
    cfg: Config,
    model_state: dict[str, torch.Tensor],
    fmt: str,
    built: dict[str, Any] | None = None,
    preprocess: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``(state_dict, spec)`` of the backbone in ``model_state`` (an ``SSLMethod`` state dict)
    in format ``fmt``; ``spec`` says how to build the model that loads it. ``built``: the
    library backbone's own record of its constructor keywords (a checkpoint's ``backbone``,
    holding a ViT's ``img_size``), else ``model.kwargs``. ``preprocess``: the run's
    evaluation view (a checkpoint's ``preprocess``, :func:`manifold_ssl.run.build.eval_preprocess`),
    which ``open_clip`` needs."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {list(FORMATS)}, got {fmt!r}")
    if fmt == "open_clip":
        if preprocess is None:
            raise ValueError("--format open_clip needs the run's evaluation view (preprocess)")
        return open_clip_state(cfg, model_state, preprocess, built)
    state = _backbone_state(model_state)
    if not state:
        raise ValueError("the checkpoint holds no backbone weights (keys backbone.*)")
    name = cfg.model.backbone
    library, sep, model_name = name.partition(":")
    if not sep:
        library, model_name = "manifold_ssl", name
    ecosystem = library in ("torchvision", "timm")
    if ecosystem:
        state = {k.removeprefix("model."): v for k, v in state.items()}
    conv = _first_conv(state)
    spec: dict[str, Any] = {
        "format": fmt,
        "backbone": name,
        "library": fmt if fmt != "state_dict" else library,
        "name": model_name,
        "kwargs": dict((built or {}).get("kwargs", cfg.model.kwargs)),
        "in_channels": int(conv.shape[1]) if conv is not None else None,
        "cifar_stem": bool(cfg.model.small_images and _is_resnet(library, model_name)),
    }
    if fmt == "state_dict" or library == fmt:
        return {"state_dict": state, "spec": spec}
    if library == "manifold_ssl" and model_name in _RESNETS:
        width = cfg.model.width or 64
        if width != 64:
            raise ValueError(
                f"a {model_name} of width {width} has no {fmt} counterpart (its ResNets have "
                "width 64); export --format state_dict"
            )
        return {"state_dict": _own_resnet_to_library(state), "spec": spec}
    if ecosystem and _is_resnet(library, model_name):  # torchvision ↔ timm ResNets: same keys
        return {"state_dict": state, "spec": spec}
    raise ValueError(
        f"backbone {name!r} cannot be written as {fmt} weights: only ResNets cross between "
        f"libraries; train with {fmt}:<name>, or export --format state_dict"
    )


def open_clip_state(
    cfg: Config,
    model_state: dict[str, torch.Tensor],
    preprocess: dict[str, Any],
    built: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A multimodal run's towers as an OpenCLIP ``CustomTextCLIP`` state dict (``visual.trunk``
    the timm model, ``visual.head.proj`` the projection, ``text`` the text transformer as it is,
    ``logit_scale`` the learned one, or CLIP's initial 1/0.07 for MMCR, which has none) and, as
    ``spec["model_config"]``, the OpenCLIP model config that builds it. Needs a ``timm:<name>``
    image tower built with the model's defaults (3 input channels, no CIFAR stem, no
    ``model.kwargs``) and a one-layer projector (``model.projector: "D"``).

    ``preprocess`` (the run's evaluation view: size, crop fraction, statistics) becomes
    ``spec["preprocess_cfg"]``, OpenCLIP's names for it, which the load lines pass to
    ``create_model_and_transforms`` (``image_mean``, ``image_std``, ``image_interpolation``,
    ``image_resize_mode``): OpenCLIP's default are CLIP's ImageNet statistics and bicubic
    resizing, not the run's. (OpenCLIP 3 reads a ``preprocess_cfg`` only from a hub or
    ``local-dir:`` config; in a config given to ``add_model_config`` it is an error.)"""
    from .methods import MULTIMODAL

    name, projector = cfg.model.backbone, cfg.model.projector
    if cfg.method.name not in MULTIMODAL:
        raise ValueError(
            f"--format open_clip writes a multimodal run (method {sorted(MULTIMODAL)}), not "
            f"{cfg.method.name}; export its backbone as torchvision, timm or state_dict"
        )
    library, _, model_name = name.partition(":")
    kwargs = dict((built or {}).get("kwargs", cfg.model.kwargs))
    conv = _first_conv(_backbone_state(model_state))
    if (
        library != "timm"
        or cfg.model.small_images
        or kwargs
        or (conv is not None and conv.shape[1] != 3)
    ):
        raise ValueError(
            f"OpenCLIP builds a timm image tower with the model's defaults: the run's backbone "
            f"must be timm:<name> on 3-channel images, without model.small_images or "
            f"model.kwargs (got {name!r}, small_images={cfg.model.small_images}, kwargs={kwargs})"
        )
    if not projector.isdigit():
        raise ValueError(
            f"OpenCLIP's timm image tower ends in one linear projection: the run's "
            f"model.projector must be one layer (e.g. '512'), got {projector!r}"
        )
    import math

    import timm

    with torch.device("meta"):  # the model's default pooling; no weights allocated
        pool = timm.create_model(model_name, pretrained=False).global_pool
    state = {
        f"visual.trunk.{k.removeprefix('backbone.model.')}": v
        for k, v in model_state.items()
        if k.startswith("backbone.model.")
    }
    state["visual.head.proj.weight"] = model_state["projector.0.weight"]
    state["visual.head.proj.bias"] = model_state["projector.0.bias"]
    state |= {k: v for k, v in model_state.items() if k.startswith("text.")}
    state["logit_scale"] = model_state.get("logit_scale", torch.tensor(math.log(1 / 0.07)))
    t = cfg.text
    model_config = {
        "embed_dim": int(projector),
        "custom_text": True,
        "vision_cfg": {
            "timm_model_name": model_name,
            "timm_model_pretrained": False,
            "timm_pool": getattr(pool, "pool_type", pool),
            "timm_proj": "linear",
            "timm_proj_bias": True,
            "image_size": int(preprocess["size"]),
        },
        "text_cfg": {
            "context_length": t.context_length,
            "vocab_size": int(model_state["text.token_embedding.weight"].shape[0]),
            "width": t.width,
            "heads": t.heads,
            "layers": t.layers,
        },
    }
    spec = {
        "format": "open_clip",
        "backbone": name,
        "library": "open_clip",
        "name": model_name,
        "preprocess_cfg": {
            "size": int(preprocess["size"]),
            "mean": [float(v) for v in preprocess["mean"]],
            "std": [float(v) for v in preprocess["std"]],
            "interpolation": preprocess["interpolation"],
            "resize_mode": "shortest",
        },
        "crop_fraction": float(preprocess["crop_fraction"]),
    }
    return {"state_dict": state, "spec": spec | {"model_config": model_config}}


def _is_resnet(library: str, name: str) -> bool:
    return name in _RESNETS or (
        library != "manifold_ssl" and re.fullmatch(r"resnet\d+", name) is not None
    )


def _first_conv(state: dict[str, torch.Tensor]) -> torch.Tensor | None:
    return next((v for v in state.values() if v.ndim == 4), None)


def _snippet(spec: dict[str, Any], file: str) -> str:
    if spec["library"] == "open_clip":
        return _open_clip_snippet(spec, file)
    kwargs = dict(spec["kwargs"])
    if spec["library"] == "timm" and spec["in_channels"] not in (None, 3):
        kwargs["in_chans"] = spec["in_channels"]
    kw = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    if spec["library"] == "timm":
        make = f"timm.create_model({spec['name']!r}{', ' + kw if kw else ''})"
        head = "import timm"
    elif spec["library"] == "torchvision":
        make = f"torchvision.models.get_model({spec['name']!r}{', ' + kw if kw else ''})"
        head = "import torchvision"
    else:
        return (
            f"import torch\nstate = torch.load({file!r}, weights_only=True)  "
            f"# keys of manifold-ssl's {spec['backbone']}"
        )
    stem = (
        "\nfrom manifold_ssl.models import cifar_stem\ncifar_stem(model)"
        if spec["cifar_stem"]
        else ""
    )
    return (
        f"import torch\n{head}\nmodel = {make}{stem}\n"
        f"missing, unexpected = model.load_state_dict(torch.load({file!r}, weights_only=True), "
        "strict=False)  # missing: the classifier only"
    )


def _open_clip_snippet(spec: dict[str, Any], file: str) -> str:
    """The lines that load an ``open_clip`` export, with the run's evaluation view as
    ``preprocess``: OpenCLIP's transforms given the run's statistics and interpolation, or,
    where the run crops a central fraction (``data.crop_fraction`` < 1, which OpenCLIP's
    transforms cannot), the run's view in torchvision's transforms."""
    name, pp = Path(file).stem, spec["preprocess_cfg"]
    mean, std = tuple(pp["mean"]), tuple(pp["std"])
    lines = [
        "import open_clip",
        f"open_clip.add_model_config({spec['model_config']!r})",
        f"model, _, preprocess = open_clip.create_model_and_transforms({name!r}, "
        f"pretrained={file!r}, image_mean={mean!r}, image_std={std!r}, "
        f"image_interpolation={pp['interpolation']!r}, image_resize_mode={pp['resize_mode']!r})",
        f"tokenizer = open_clip.get_tokenizer({name!r})",
    ]
    crop = spec["crop_fraction"]
    if crop != 1.0:  # shorter side to size / crop_fraction, then the central size x size
        short = round(pp["size"] / crop)
        lines += [
            f"from torchvision import transforms as T  # the run's view crops the central {crop:g}",
            f"preprocess = T.Compose([T.Resize({short}, T.InterpolationMode.BILINEAR), "
            f"T.CenterCrop({pp['size']}), T.Lambda(lambda image: image.convert('RGB')), "
            f"T.ToTensor(), T.Normalize({mean!r}, {std!r})])",
        ]
    return "\n".join(lines)


def export_backbone(
    source: str | Path,
    fmt: str,
    out: str | Path,
    overwrite: bool = False,
    checkpoint: str = "last",
) -> Path:
    """Write the backbone of ``source`` (a run directory or a checkpoint file) to ``out`` in
    format ``fmt``, and ``out.json`` beside it; returns the file written. ``out`` a folder
    (existing, or ending in ``/`` or without a suffix): ``out/<run>[-<checkpoint>]-<fmt>.pt``.
    An existing file is replaced only with ``overwrite``, and never anything but a regular file
    (a device, a link). ``checkpoint``: which of a run directory's kept checkpoints (``last``,
    ``best``, ``epoch-<N>``)."""
    src = Path(source)
    ckpt = RunDir(src).existing_checkpoint(checkpoint) if src.is_dir() else src
    if not ckpt.is_file():
        raise FileNotFoundError(f"no checkpoint at {ckpt} (export takes a run directory or a .pt)")
    out = _export_target(str(out), ckpt if src.is_file() else src, fmt, overwrite, checkpoint)
    if src.is_dir():  # a run still training moves its checkpoint: read it under the run's lock
        run = RunDir(src)
        with run.lock():
            cfg, state = run.trained(ckpt.name)
    else:
        state = load_checkpoint(ckpt)
        cfg = config_from_dict(state["config"])
    preprocess = state.get("preprocess")
    if fmt == "open_clip" and preprocess is None:  # a checkpoint written before it was kept
        preprocess = _preprocess_from_data(cfg, ckpt)
    result = export_state(cfg, state["model"], fmt, state.get("backbone"), preprocess)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(result["state_dict"], out)
    spec = {**result["spec"], "source": str(ckpt), "step": state.get("step")}
    if fmt == "open_clip":  # its model config, named as the weights: NAME.json beside NAME.pt
        config = spec.pop("model_config")
        atomic_write_text(out.with_suffix(".json"), json.dumps(config, indent=2) + "\n")
        spec["model_config"] = str(out.with_suffix(".json"))
    spec["load"] = _snippet(spec, str(out))
    atomic_write_text(out.with_name(out.name + ".json"), json.dumps(spec, indent=2) + "\n")
    return out


def _preprocess_from_data(cfg: Config, ckpt: Path) -> dict[str, Any]:
    """The evaluation view of a run whose checkpoint does not record it: measured on the
    run's data, as its evaluation does."""
    from .run.build import eval_preprocess, splits_of

    try:
        splits = splits_of(cfg)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{ckpt} does not record the run's image statistics (a checkpoint from before "
            f"they were kept), and its data (data.name={cfg.data.name}, "
            f"data.path={cfg.data.path}) cannot be read to measure them: {err}"
        ) from err
    return eval_preprocess(cfg, splits)


def _export_target(target: str, src: Path, fmt: str, overwrite: bool, checkpoint: str) -> Path:
    """The file ``--out`` names: ``target`` itself, or ``<run>[-<checkpoint>]-<fmt>.pt`` in
    it when it is a folder (one that exists, or a path ending in ``/`` or without a suffix,
    made here), so that a name never becomes a file the user meant as a folder."""
    out = Path(target)
    if out.is_dir() or target.endswith(("/", os.sep)) or not out.suffix:
        kept = checkpoint_name(checkpoint).removesuffix(".pt")
        name = src.stem if src.is_file() else src.name + ("" if kept == "last" else f"-{kept}")
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {target} is a file, not a folder; choose another path")
        out = out / f"{name}-{fmt}.pt"
    written = [out, out.with_name(out.name + ".json")]
    written += [out.with_suffix(".json")] if fmt == "open_clip" else []  # its model config
    for path in written:
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise ValueError(f"--out {path} exists and is not a regular file; choose another path")
        if path.exists() and not overwrite:
            raise ValueError(f"--out {path} exists; choose another path or pass --overwrite")
    return out
