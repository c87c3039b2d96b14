"""The method table and the one class that runs every method (see the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import LOSSES
from ..models.heads import MomentumEncoder, cosine_momentum, embedding_dim, mlp_from_spec

__all__ = ["METHODS", "MethodSpec", "SSLMethod", "build_method"]


@dataclass(frozen=True)
class MethodSpec:
    """How one method is wired, as its authors' training code wires it."""

    loss: str  # name in LOSSES
    layout: str  # "views" | "pair" | "predict"
    predictor: bool = False
    target: str = "none"  # "none" | "ema" (always) | "optional" (when momentum > 0)
    last_bn: bool = False  # affine-free BN after the projector (SimSiam, MEC / Matrix-SSL)
    combine: str = "mean"  # "predict": average ("mean") or add ("sum", BYOL) the two pairings
    ema: str = "cosine"  # EMA coefficient: "cosine" τ_base → 1 (BYOL) or "constant" (MMCR)


METHODS: dict[str, MethodSpec] = {
    # Yerxa et al.: momentum views optional, constant τ (App. D: 0.99)
    "mmcr": MethodSpec("mmcr", "views", target="optional", ema="constant"),
    "clamp": MethodSpec("clamp", "views"),
    "simclr": MethodSpec("simclr", "views"),
    "barlow_twins": MethodSpec("barlow_twins", "pair"),
    "vicreg": MethodSpec("vicreg", "pair"),
    # Grill et al.: loss = loss_one + loss_two
    "byol": MethodSpec("byol", "predict", predictor=True, target="ema", combine="sum"),
    # Chen & He: −(D(p1, z2) + D(p2, z1)) / 2, BN without affine after the projector
    "simsiam": MethodSpec("simsiam", "predict", predictor=True, last_bn=True),
    # Matrix-SSL main_pretrain.py on MEC's builder: EMA teacher, affine-free BN after the
    # projector, (L(t2, o1) + L(t1, o2)) / 2 with the teacher's projections t first
    "matrix_ssl": MethodSpec("matrix_ssl", "predict", predictor=True, target="ema", last_bn=True),
}


class SSLMethod(nn.Module):
    """Backbone + projector (+ predictor) (+ EMA target) + objective.

    ``forward(views)`` takes (B, K, C, H, W) float views and returns ``(loss, terms, z)`` with
    ``z`` the detached (B, K, D) projections for metrics.
    """

    def __init__(
        self,
        name: str,
        backbone: nn.Module,
        projector: str,
        predictor: str = "",
        momentum: float = 0.0,
        loss_kwargs: dict[str, Any] | None = None,
        ema: str = "auto",
    ) -> None:
        super().__init__()
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; expected one of {sorted(METHODS)}")
        if ema not in ("auto", "cosine", "constant"):
            raise ValueError(f"ema must be 'auto', 'cosine' or 'constant', got {ema!r}")
        spec = METHODS[name] if ema == "auto" else replace(METHODS[name], ema=ema)
        self.name, self.spec = name, spec
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if spec.target == "ema" and momentum == 0:
            raise ValueError(f"method {name} needs a momentum encoder: set momentum in (0, 1)")
        if spec.predictor and not predictor:
            raise ValueError(f"method {name} needs a predictor spec, e.g. predictor='512-128'")
        if not spec.predictor and predictor:
            raise ValueError(f"method {name} has no predictor; remove predictor={predictor!r}")
        self.backbone = backbone
        out_dim: int = backbone.out_dim  # type: ignore[assignment]
        self.projector = mlp_from_spec(out_dim, projector, last_bn=spec.last_bn)
        proj_dim = embedding_dim(projector, out_dim)
        self.predictor = mlp_from_spec(proj_dim, predictor) if spec.predictor else None
        try:
            self.loss_fn = LOSSES[spec.loss](**(loss_kwargs or {}))
        except TypeError as err:
            raise ValueError(f"method.loss: bad keyword for the {spec.loss} loss: {err}") from None
        self.base_momentum = momentum
        use_target = spec.target == "ema" or (spec.target == "optional" and momentum > 0)
        self.target = (
            MomentumEncoder(nn.Sequential(backbone, self.projector)) if use_target else None
        )

        self.online_head: nn.Linear | None = None
        self._features: list[torch.Tensor] | None = None  # backbone outputs inside forward

    def attach_online_head(self, num_classes: int, seed: int = 0) -> None:
        """A linear classifier on the backbone's features, trained by :meth:`forward`'s
        ``labels`` on detached features (the online probe): its loss, ``terms["online_ce"]``,
        reaches the head alone. Initialised from ``seed`` without touching the global RNG."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.online_head = nn.Linear(int(self.backbone.out_dim), num_classes)  # type: ignore[arg-type]

    def load_state_dict(self, state: Any, strict: bool = True, assign: bool = False) -> Any:
        """As ``nn.Module``'s, with the online head attached when ``state`` holds one (a run
        trained with ``train.online_linear``) and kept fresh when it holds none (a checkpoint
        written before the head existed)."""
        weight = state.get("online_head.weight")
        if weight is not None and self.online_head is None:
            self.attach_online_head(int(weight.shape[0]))
            assert self.online_head is not None
            self.online_head.to(weight.device)
        if weight is None and self.online_head is not None:
            head = {f"online_head.{k}": v for k, v in self.online_head.state_dict().items()}
            state = {**state, **head}
        return super().load_state_dict(state, strict=strict, assign=assign)

    def online(self, x: torch.Tensor) -> torch.Tensor:
        h = self.backbone(x)
        if self._features is not None:  # inside forward: the online head's inputs
            self._features.append(h)
        return self.projector(h)

    def forward(
        self, views: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """``(loss, terms, z)`` of (B, K, C, H, W) ``views``; with ``labels`` (B,) (−1: none)
        and an online head, ``terms["online_ce"]`` is its cross-entropy on the detached
        features of every view (added to the loss by the caller, reaching the head alone)."""
        self._features = []
        try:
            loss, terms, z = self._objective(views)
            features = self._features
        finally:
            self._features = None
        if labels is not None and self.online_head is not None:
            k = views.shape[1]
            feats = torch.cat([f.detach() for f in features])
            # views layout: image-major rows (b·K); per-view passes: view-major (K·b)
            if len(features) == 1:
                targets = labels.repeat_interleave(k, output_size=labels.shape[0] * k)
            else:
                targets = labels.repeat(len(features))
            head_dtype = next(self.online_head.parameters()).dtype  # float32 under amp too
            logits = self.online_head(feats.to(head_dtype))
            # a mean over the labelled rows; 0 for a batch of unlabelled images (STL-10's)
            ce = F.cross_entropy(logits, targets, ignore_index=-1, reduction="sum")
            terms = {**terms, "online_ce": ce / (targets >= 0).sum().clamp_min(1)}
        return loss, terms, z

    def _objective(
        self, views: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        b, k = views.shape[:2]
        if k < 2:
            raise ValueError(
                f"views must hold K >= 2 views per image, got shape {tuple(views.shape)}"
            )
        layout = self.spec.layout
        if layout == "views":
            # all K views in one batch, as MMCR's, CLAMP's and SimCLR's code forward them
            flat = views.flatten(0, 1)  # (B·K, C, H, W)
            z = self.online(flat).view(b, k, -1)  # (B, K, D)
            # MMCR's momentum views (Yerxa App. B) when a target exists
            extra = [self.target(flat).view(b, k, -1)] if self.target is not None else []
            loss, terms = self.loss_fn(z, *extra, return_terms=True)
            return loss, terms, z.detach()
        if k != 2:
            raise ValueError(f"method {self.name} takes exactly 2 views, got {k}")
        # one forward pass per view, as the two-view methods' code runs them (BatchNorm
        # statistics are per view: Barlow Twins, VICReg, BYOL, SimSiam, MEC's builder)
        z = torch.stack([self.online(views[:, 0]), self.online(views[:, 1])], dim=1)  # (B, 2, D)
        if layout == "pair":
            loss, terms = self.loss_fn(z[:, 0], z[:, 1], return_terms=True)
            return loss, terms, z.detach()
        assert self.predictor is not None
        p = torch.stack([self.predictor(z[:, 0]), self.predictor(z[:, 1])], dim=1)  # online
        t = z  # SimSiam: the online projections, detached by the loss
        if self.target is not None:  # the EMA teacher's projections
            t = torch.stack([self.target(views[:, 0]), self.target(views[:, 1])], dim=1)
        # the pairings (p1, t2) and (p2, t1); a loss that takes the target first (Matrix-SSL:
        # the official step's mce_loss_func(p2, z1) with p the teacher) gets (t2, p1), (t1, p2)
        first, second = (t, p) if getattr(self.loss_fn, "target_first", False) else (p, t)
        loss_a, terms_a = self.loss_fn(first[:, 0], second[:, 1], return_terms=True)
        loss_b, terms_b = self.loss_fn(first[:, 1], second[:, 0], return_terms=True)
        weight = 1.0 if self.spec.combine == "sum" else 0.5
        terms = {key: (terms_a[key] + terms_b[key]) * weight for key in terms_a}
        return (loss_a + loss_b) * weight, terms, z.detach()

    def target_tau(self, step: int, total_steps: int) -> float:
        """The EMA coefficient after optimiser step ``step`` (τ constant, or cosine τ_base → 1;
        1.0 without a target), computed on the host."""
        if self.target is None:
            return 1.0
        if self.spec.ema == "cosine":
            return cosine_momentum(self.base_momentum, step, total_steps)
        return self.base_momentum

    @torch.no_grad()
    def after_step(self, tau: float | torch.Tensor) -> None:
        """What follows an optimiser step: the target's EMA step with coefficient ``tau`` (a
        float, or a 0-dim device tensor inside a compiled step)."""
        if self.target is not None:
            self.target.update(nn.Sequential(self.backbone, self.projector), tau)

    def update_target(self, step: int, total_steps: int) -> None:
        """EMA step of the target after an optimiser step (τ constant, or cosine τ_base → 1)."""
        self.after_step(self.target_tau(step, total_steps))


def build_method(name: str, backbone: nn.Module, projector: str, **kwargs: Any) -> SSLMethod:
    """``SSLMethod(name, backbone, projector, predictor=..., momentum=..., loss_kwargs=...)``."""
    return SSLMethod(name, backbone, projector, **kwargs)
