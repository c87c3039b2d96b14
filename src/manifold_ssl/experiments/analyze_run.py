"""The geometry report of a trained model (``manifold-ssl analyze``): a run directory, a
checkpoint file or an untrained model from a recipe, on its own test split and views; or of a
``.npy`` of features. The measures are :mod:`manifold_ssl.experiments.analyze`'s; this module
turns the source into the model, images and views they take."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Config, config_from_dict, load_recipe
from ..data.splits import DataSplits, as_tensors
from ..data.views import MultiViewAugment
from ..methods import SSLMethod
from ..run.build import splits_of, view_specs
from ..run.record import RunDir, method_from_state
from ..training.checkpoint import load_checkpoint
from .analyze import AnalyzeConfig, analyze_features, analyze_model, write_analysis_report

__all__ = ["analyze_source"]


def analyze_source(
    path: str | Path | None,
    settings: AnalyzeConfig | None = None,
    labels: str | Path | None = None,
    untrained: str | None = None,
    out: str | Path | None = None,
    progress: bool = True,
) -> tuple[Path, list[Path]]:
    """Write the geometry report of ``path`` (a run directory, a ``.pt`` checkpoint, or a
    ``.npy`` of features: (N, F) with the class ids ``labels``, or (P, m, F) manifolds), or of
    an ``untrained`` model from a recipe, into ``out`` (default: beside the input); returns the
    folder and its figures. A run directory is read under its lock, held until its report is
    written (its checkpoint does not move meanwhile)."""
    s = settings or AnalyzeConfig()
    source = Path(path) if path is not None else None
    with contextlib.ExitStack() as lock:
        if source is not None and source.suffix == ".npy":
            if not source.exists():
                raise FileNotFoundError(f"features file {source} does not exist")
            ids = np.load(labels) if labels else None
            result = analyze_features(
                np.load(source), ids, s.per_class, s.n_t, s.seed, s.projection_dim
            )
            folder = Path(out or source.with_name(source.stem + "-analysis"))
            title = source.name
        else:
            cfg, state, title, default_out = _model_source(source, untrained, lock)
            folder = Path(out or default_out)
            result = _analyze_trained(cfg, state, s, progress)
        return folder, write_analysis_report(result, folder, title)


def _model_source(
    path: Path | None, untrained: str | None, lock: contextlib.ExitStack
) -> tuple[Config, dict[str, Any] | None, str, Path]:
    """The config, checkpoint state (None: untrained), title and default report folder."""
    if untrained:
        return (
            load_recipe(untrained),
            None,
            f"untrained {untrained}",
            Path(f"analysis-untrained-{Path(untrained).stem}"),
        )
    if path is not None and path.is_dir():
        run = RunDir(path)
        lock.enter_context(run.lock())
        cfg, state = run.trained("last.pt")
        return cfg, state, path.name, path / "analysis"
    if path is not None and path.suffix == ".pt":
        state = load_checkpoint(path)
        return (
            config_from_dict(state["config"]),
            state,
            path.name,
            path.with_name(path.stem + "-analysis"),
        )
    raise ValueError(
        "analyze needs a run directory, a .pt checkpoint, a .npy of features, or --untrained RECIPE"
    )


def _analyze_trained(
    cfg: Config, state: dict[str, Any] | None, s: AnalyzeConfig, progress: bool
) -> dict[str, Any]:
    """The model's geometry on its test split under its own views, and for a method of image
    views the gradient coherence of its objective."""
    splits = splits_of(cfg)
    method = method_from_state(cfg, state, splits, "cpu", "analyze")
    torch.manual_seed(cfg.train.seed)  # the analysis's own draws
    specs = view_specs(cfg, splits)
    test = as_tensors(splits.test)
    aug = MultiViewAugment(specs, s.n_augment)
    result = analyze_model(
        method.backbone,
        test.images,
        splits.test.labels,
        specs[0].mean,
        specs[0].std,
        aug,
        s,
        progress,
    )
    if isinstance(method, SSLMethod):  # the objective of image views (not image-caption)
        views = cfg.views.num_views
        coherence, layers, absent = _coherence_of(method, splits, specs, views, s.seed)
        result["gradient_coherence"] = coherence
        if layers:
            result["gradient_coherence_layers"] = layers
        if absent:
            result["gradient_coherence_absent"] = absent
    return result


def _coherence_of(
    method: SSLMethod, splits: DataSplits, specs: Any, num_views: int, seed: int
) -> tuple[dict[str, float], dict[str, str], str | None]:
    """Gradient coherence (Yerxa Fig. 3) of the objective on 16 test images of each of the
    first four classes with that many, under the run's own views, with the shuffled-label
    control; the first and last layers it measured; why it is absent (None: present)."""
    from ..evaluation.coherence import coherence_layers, coherence_shortfall, coherence_with_control

    labels = splits.test.labels
    absent = coherence_shortfall(labels)
    if absent:
        return {}, {}, f"{absent} (the test split's)"
    full = [c for c in labels.unique() if int((labels == c).sum()) >= 16][:4]
    pick = torch.cat([torch.nonzero(labels == c).flatten()[:16] for c in full])
    gen = torch.Generator().manual_seed(seed)
    images = as_tensors(splits.test.subset(pick)).images
    views = MultiViewAugment(specs, num_views)(images, gen)
    method.eval()
    loss_of = lambda v: method(v)[0]  # noqa: E731
    layers = coherence_layers(method, loss_of, views[:8])
    return coherence_with_control(method, loss_of, views, labels[pick], seed), layers, None
