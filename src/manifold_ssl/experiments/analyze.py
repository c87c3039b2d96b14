"""``manifold-ssl analyze``: the geometry report of a run, a checkpoint, a model or features.

For a model (a run directory, a checkpoint, or an untrained model from a recipe): features of
every backbone stage on the test split, two kinds of manifolds per stage (Yerxa App. E.1):
class manifolds (classes × examples) and augmentation manifolds (exemplars × augmented views,
with the run's own views); their mean-field capacity, radius and dimension per layer (Yerxa
Fig. 2); the eigenspectrum of the final features with its power-law fit; same- vs
different-class similarity distributions (Fig. 4–5); and a t-SNE picture (CLAMP Fig. 5).
For a ``.npy`` of features: (N, F) with ``--labels`` gives class manifolds; (P, m, F) is taken
as manifolds directly. Writes ``analysis.json``, ``analysis.md`` and PNG figures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .._keys import key, optional, positive
from ..geometry.capacity import elliptical_geometry, manifold_capacity
from ..geometry.manifold_stats import manifold_similarities, split_by_class
from ..geometry.spectral import class_effective_ranks, covariance_spectrum, powerlaw_decay, rankme
from ..runinfo import atomic_write_text, write_json

__all__ = [
    "AnalyzeConfig",
    "analyze_features",
    "analyze_model",
    "backbone_layers",
    "library_layers",
    "write_analysis_report",
]


@dataclass
class AnalyzeConfig:
    """The settings of the geometry report (``manifold-ssl analyze``: ``--n-t 200`` or
    ``--analyze.n_t=200``)."""

    per_class: int | None = key(
        None,
        "images per class manifold (null: 50, or the class size when smaller)",
        optional(positive),
    )
    n_exemplars: int = key(50, "images whose augmentation manifolds are measured", positive)
    n_augment: int = key(30, "augmented views per exemplar", positive)
    n_t: int = key(200, "Gaussian samples t of the mean-field capacity", positive)
    seed: int = key(0, "seed of the sampling and projections")
    projection_dim: int | None = key(
        None,
        "randomly project wider layers to this many dimensions first (Yerxa: 5000)",
        optional(positive),
    )


def backbone_layers(backbone: torch.nn.Module) -> list[str]:
    """The stage outputs worth analysing: the stem, each stage, and the pooled features (a
    ``torchvision:``/``timm:`` backbone: :func:`library_layers` of its model)."""
    children = dict(backbone.named_children())
    names = list(children)
    if names == ["model"]:  # EcosystemBackbone: the library's own model
        return library_layers(children["model"], "model")
    stages = children.get("stages")
    if isinstance(stages, torch.nn.Sequential):  # ResNet
        return ["stem", *[f"stages.{i}" for i in range(len(stages))], "pool"]
    features = children.get("features")
    if isinstance(features, torch.nn.Sequential):  # ConvNet: after each ReLU
        relus = [f"features.{i}" for i, m in enumerate(features) if isinstance(m, torch.nn.ReLU)]
        return [*relus, "pool"]
    return [n for n in names if n]


def library_layers(model: torch.nn.Module, prefix: str) -> list[str]:
    """Stage outputs of a torchvision or timm model (under ``prefix``), ending with the model's
    own output (its pooled features): ResNets' stem (``maxpool``) and ``layer1``–``layer4``;
    transformers' and other staged models' embedding and every block (timm ``blocks`` /
    ``stages``, torchvision ViT ``encoder.layers``); else every child with parameters."""
    children = dict(model.named_children())
    if "layer1" in children:  # torchvision and timm ResNets
        stages = [f"layer{i}" for i in range(1, 10) if f"layer{i}" in children]
        stem = ["maxpool"] if "maxpool" in children else []
        return [f"{prefix}.{n}" for n in [*stem, *stages]] + [prefix]
    encoder_layers = getattr(children.get("encoder"), "layers", None)
    seq: torch.nn.Module | None = None
    if isinstance(encoder_layers, torch.nn.Sequential):
        seq, where = encoder_layers, "encoder.layers"  # torchvision ViT
    else:
        where = ""
        for name in ("blocks", "stages", "layers", "features"):
            if isinstance(children.get(name), torch.nn.Sequential | torch.nn.ModuleList):
                seq, where = children[name], name
                break
    if seq is not None and len(list(seq.children())) > 1:
        embed = next(iter(children))  # patch_embed, conv_proj, stem
        blocks = [f"{prefix}.{where}.{n}" for n, _ in seq.named_children()]
        head = [f"{prefix}.{embed}"] if not where.startswith(embed) else []
        return [*head, *blocks, prefix]
    with_params = [n for n, c in children.items() if any(True for _ in c.parameters())]
    return [f"{prefix}.{n}" for n in with_params] + [prefix]


def _capacity_row(
    X: torch.Tensor, n_t: int, seed: int, projection_dim: int | None = None
) -> dict[str, float]:
    res = manifold_capacity(X.double(), n_t=n_t, seed=seed, projection_dim=projection_dim)
    er, ed = elliptical_geometry(X.double())
    return {
        "capacity": res.capacity,
        "radius": res.radius,
        "dimension": res.dimension,
        "center_correlation": res.center_correlation,
        "n_removed": res.n_removed,
        "elliptical_radius": float(er.mean()),
        "elliptical_dimension": float(ed.mean()),
    }


def analyze_features(
    features: np.ndarray,
    labels: np.ndarray | None,
    per_class: int | None = None,
    n_t: int = 200,
    seed: int = 0,
    projection_dim: int | None = None,
) -> dict[str, Any]:
    """Geometry of an array of features: (N, F) with labels, or (P, m, F) manifolds.

    ``per_class`` examples form each class manifold (default: 50, or the size of the classes
    when they are smaller; see :func:`~manifold_ssl.evaluation.features.default_per_class`)."""
    from ..evaluation.features import class_manifolds, default_per_class

    x = torch.as_tensor(np.asarray(features, dtype=np.float64))
    out: dict[str, Any] = {}
    if x.ndim == 3:
        manifolds, man_labels = x, None
        flat = x.flatten(0, 1)
        classes = None
    elif x.ndim == 2:
        if labels is None:
            raise ValueError("features of shape (N, F) need --labels (a .npy of N class ids)")
        y = torch.as_tensor(np.asarray(labels)).flatten()
        per_class = per_class or default_per_class(y)
        # one manifold per class: every pair of manifolds is a pair of different classes
        manifolds, kept = class_manifolds(x, y, per_class, seed)
        man_labels, classes = None, kept.tolist()
        flat = x
        out["class_effective_ranks"] = class_effective_ranks(x, y)
    else:
        raise ValueError(f"features must be (N, F) or (P, m, F), got shape {tuple(x.shape)}")
    out["manifolds"] = {"features": _capacity_row(manifolds, n_t, seed, projection_dim)}
    spectrum = covariance_spectrum(flat)
    out["spectrum"] = {
        "eigenvalues": spectrum.tolist(),
        "rankme": rankme(flat),
        "powerlaw": asdict(powerlaw_decay(spectrum)),
    }
    stats = manifold_similarities(manifolds)
    out["similarity"] = _similarity_summary(stats, man_labels)
    out["_stats"] = (stats, man_labels)
    out["_tsne"] = (flat, labels if x.ndim == 2 else np.repeat(np.arange(x.shape[0]), x.shape[1]))
    out["settings"] = {
        "input_shape": list(x.shape),
        "manifolds": "class manifolds (one per class)" if x.ndim == 2 else "given (P, m, F)",
        "per_class": per_class if x.ndim == 2 else None,
        "classes": classes,
        "n_t": n_t,
        "seed": seed,
        "projection_dim": projection_dim,
    }
    return out


def _alignment_uniformity(views: torch.Tensor) -> dict[str, float]:
    """Wang–Isola alignment (first two views of each exemplar) and uniformity (all views)."""
    from ..losses.wang_isola import alignment_loss, uniformity_loss

    v = views.double()
    return {
        "alignment": float(alignment_loss(v[:, 0], v[:, 1])),
        "uniformity": float(uniformity_loss(v.flatten(0, 1))),
    }


def _similarity_summary(
    stats: dict[str, np.ndarray], labels: torch.Tensor | None
) -> dict[str, Any]:
    keys = ("centroid_cosine", "subspace_cosine", "shared_variance", "orientation")
    if labels is None:
        return {k: float(stats[k].mean()) for k in keys}
    split = split_by_class(stats, labels.numpy())
    return {
        group: {k: float(v[k].mean()) if len(v[k]) else None for k in keys}
        for group, v in split.items()
    }


def analyze_model(
    backbone: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    augment: Any,
    settings: AnalyzeConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Per-layer class and augmentation manifold geometry of ``backbone`` on uint8 ``images``
    (N, C, H, W) with class ids ``labels`` (N,): ``settings.per_class`` images of each class
    form its manifold (as in :func:`analyze_features`), ``settings.n_augment`` views
    (``augment(images, generator)``) of ``settings.n_exemplars`` of them the augmentation
    manifolds."""
    from ..evaluation.features import class_manifolds, layer_features, normalise_images

    s = settings or AnalyzeConfig()
    gen = torch.Generator().manual_seed(s.seed)
    per_class, chosen, ex = _picks(labels, s, gen)
    layers = backbone_layers(backbone)
    feats_cls = layer_features(backbone, normalise_images(images[chosen], mean, std), layers)
    views = augment(images[ex], gen)  # (E, n_augment, C, H, W)
    feats_aug = layer_features(backbone, views.flatten(0, 1), layers)
    out: dict[str, Any] = {"layers": layers, "manifolds": {}}
    for layer in tqdm(layers, desc="layers", disable=not progress):
        cls_x, kept = class_manifolds(feats_cls[layer], labels[chosen], per_class, s.seed)
        aug_x = feats_aug[layer].reshape(len(ex), s.n_augment, -1)
        out["manifolds"][layer] = {
            "class": _capacity_row(cls_x, s.n_t, s.seed, s.projection_dim),
            "augmentation": _capacity_row(aug_x, s.n_t, s.seed, s.projection_dim),
        }
    final = feats_cls[layers[-1]]
    aug_final = feats_aug[layers[-1]].reshape(len(ex), s.n_augment, -1)
    out.update(_final_layer(final, labels[chosen], aug_final, labels[ex]))
    out["settings"] = {
        **asdict(s),
        "images": int(images.shape[0]),
        "per_class": per_class,
        "classes": kept.tolist(),
        "spectrum_layer": layers[-1],
    }
    return out


def _picks(
    labels: torch.Tensor, s: AnalyzeConfig, gen: torch.Generator
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """The images per class, the indices of the class manifolds' images (per_class of each
    class, at random) and of the exemplars (n_exemplars of them, spread over classes)."""
    from ..evaluation.features import default_per_class

    per_class = s.per_class or default_per_class(labels)
    pick = []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        pick.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    chosen = torch.cat(pick)
    return per_class, chosen, chosen[torch.randperm(len(chosen), generator=gen)[: s.n_exemplars]]


def _final_layer(
    final: torch.Tensor, labels: torch.Tensor, aug: torch.Tensor, aug_labels: torch.Tensor
) -> dict[str, Any]:
    """The final layer's spectrum, effective ranks, alignment and uniformity and manifold
    similarities, with what the report's figures draw (``_stats``, ``_tsne``)."""
    spectrum = covariance_spectrum(final)
    stats = manifold_similarities(aug)
    return {
        "spectrum": {
            "eigenvalues": spectrum.tolist(),
            "rankme": rankme(final),
            "powerlaw": asdict(powerlaw_decay(spectrum)),
        },
        "class_effective_ranks": class_effective_ranks(final, labels),
        "alignment_uniformity": _alignment_uniformity(aug),
        "similarity": _similarity_summary(stats, aug_labels),
        "_stats": (stats, aug_labels),
        "_tsne": (final, labels.numpy()),
    }


def write_analysis_report(result: dict[str, Any], out_dir: Path, title: str) -> list[Path]:
    """analysis.json, analysis.md and the figures."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    stats, stat_labels = result.pop("_stats")
    flat, flat_labels = result.pop("_tsne")
    layer = result.get("settings", {}).get("spectrum_layer")
    where = f"layer {layer}" if layer else "the features"
    figures = [_capacity_figure(result, out_dir)] if "layers" in result else []
    figures += [
        _spectrum_figure(result["spectrum"], where, out_dir),
        _similarity_figure(stats, stat_labels, "layers" in result, out_dir),
        _tsne_figure(flat, flat_labels, where, out_dir),
    ]
    write_json(out_dir / "analysis.json", result)
    lines = [f"# Geometry report: {title}", "", *_report_lines(result)]
    lines += ["", *[f"![{f.stem}]({f.name})" for f in figures]]
    atomic_write_text(out_dir / "analysis.md", "\n".join(lines) + "\n")
    return figures


def _saved(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _capacity_figure(result: dict[str, Any], out_dir: Path) -> Path:
    """Capacity, radius and dimension of both kinds of manifolds by layer (Yerxa Fig. 2)."""
    import matplotlib.pyplot as plt

    layers, manifolds = result["layers"], result["manifolds"]
    labels = {
        "capacity": "capacity α_M (P/N)",
        "radius": "radius R_M",
        "dimension": "dimension D_M",
    }
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for kind, style in (("class", "o-"), ("augmentation", "s--")):
        for ax, stat in zip(axes, labels, strict=True):
            values = [manifolds[ly][kind][stat] for ly in layers]
            ax.plot(range(len(layers)), values, style, label=kind)
            ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=7)
            ax.set(
                title=f"mean-field manifold {stat} by layer",
                xlabel="layer (input → output)",
                ylabel=labels[stat],
            )
            ax.grid(alpha=0.3)
    axes[0].legend(title="manifolds (test split)")
    return _saved(fig, out_dir / "capacity_by_layer.png")


def _spectrum_figure(spectrum: dict[str, Any], where: str, out_dir: Path) -> Path:
    """The eigenspectrum of the final features on log-log axes, with its power-law fit."""
    import matplotlib.pyplot as plt

    lam, fit = np.asarray(spectrum["eigenvalues"]), spectrum["powerlaw"]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.loglog(np.arange(1, len(lam) + 1), lam, ".", ms=3, label="eigenvalues")
    lo, hi = fit["fit_range"]
    r = np.arange(lo, hi + 1)
    line = np.exp(fit["intercept"]) * r ** (-fit["alpha"])
    ax.loglog(r, line, "r-", label=f"α = {fit['alpha']:.2f}")
    ax.set(
        xlabel="rank (log)",
        ylabel="eigenvalue of the feature covariance (log)",
        title=f"eigenspectrum: {where}",
    )
    ax.legend()
    return _saved(fig, out_dir / "spectrum.png")


def _similarity_figure(stats: Any, labels: Any, augmentation: bool, out_dir: Path) -> Path:
    """Histograms of the pairwise manifold similarities, same- against different-class."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    groups = split_by_class(stats, np.asarray(labels)) if labels is not None else {"all": stats}
    what = "augmentation manifolds" if augmentation else "manifolds"
    for ax, stat in zip(
        axes, ("centroid_cosine", "subspace_cosine", "shared_variance"), strict=True
    ):
        for name, g in groups.items():
            if len(g[stat]):
                ax.hist(g[stat], bins=30, alpha=0.6, density=True, label=name.replace("_", " "))
        ax.set(
            title=f"{stat.replace('_', ' ')} of pairs of {what}",
            xlabel=stat.replace("_", " "),
            ylabel="density",
        )
        ax.legend(title="pairs")
    return _saved(fig, out_dir / "similarity.png")


def _tsne_figure(flat: Any, flat_labels: Any, where: str, out_dir: Path) -> Path:
    """t-SNE of up to 2,000 final features, coloured by class (CLAMP Fig. 5)."""
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    pts = np.asarray(flat, dtype=np.float64)[:2000]
    perplexity = min(30, len(pts) - 1)
    emb = TSNE(n_components=2, init="pca", random_state=0, perplexity=perplexity).fit_transform(pts)
    fig, ax = plt.subplots(figsize=(6, 5))
    point_labels = np.asarray(flat_labels)[: len(pts)]
    classes = np.unique(point_labels)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for i, c in enumerate(classes):
        keep = point_labels == c
        ax.scatter(emb[keep, 0], emb[keep, 1], s=4, color=cmap(i % cmap.N), label=str(c))
    if len(classes) <= 20:
        ax.legend(
            title="class", markerscale=3, fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5)
        )
    ax.set(title=f"t-SNE of {where} ({len(pts)} points)", xticks=[], yticks=[])
    return _saved(fig, out_dir / "tsne.png")


def _report_lines(result: dict[str, Any]) -> list[str]:
    """The report's table (geometry per layer and kind of manifold) and its summary lines."""
    lines = [
        "| layer | manifolds | capacity | radius | dimension | centre corr. | K removed |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for layer, rows in result["manifolds"].items():
        for kind, row in rows.items() if "capacity" not in rows else [("features", rows)]:
            lines.append(
                f"| {layer} | {kind} | {row['capacity']:.3f} | {row['radius']:.3f} | "
                f"{row['dimension']:.2f} | {row['center_correlation']:.3f} | {row['n_removed']} |"
            )
    sp = result["spectrum"]
    fit = sp["powerlaw"]
    lo, hi = fit["fit_range"]
    lines += [
        "",
        f"- power-law decay α = {fit['alpha']:.3f} (ranks {lo}–{hi}, R² = {fit['r_squared']:.3f}); "
        f"RankMe = {sp['rankme']:.1f}",
    ]
    if "alignment_uniformity" in result:
        au = result["alignment_uniformity"]
        lines.append(
            f"- Wang–Isola alignment {au['alignment']:.3f}, uniformity {au['uniformity']:.3f}"
        )
    if result.get("gradient_coherence"):
        gc = result["gradient_coherence"]
        pairs = [
            f"{g} {gc[f'{g}/within']:.3f} / {gc[f'{g}/across']:.3f}"
            for g in ("all", "first", "last", "shuffled")
            if f"{g}/within" in gc
        ]
        lines.append(
            "- gradient coherence (Yerxa Fig. 3), within / across class: "
            + ", ".join(pairs)
            + " (shuffled: labels permuted, the control)"
        )
    if result.get("gradient_coherence_absent"):
        lines.append(f"- no gradient coherence: {result['gradient_coherence_absent']}")
    if "class_effective_ranks" in result:
        cer = result["class_effective_ranks"]
        lines.append(
            f"- intra-class erank {cer['intra_class_erank']:.2f}, "
            f"inter-class erank {cer['inter_class_erank']:.2f}"
        )
    return lines
