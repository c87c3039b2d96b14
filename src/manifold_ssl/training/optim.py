"""Optimisers (LARS, SGD, Adam, AdamW) and the per-step warmup + cosine learning rate."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from ..config import Config, effective_lr

__all__ = ["LARS", "build_optimizer", "lr_at_step", "param_groups"]


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) with momentum, as in BYOL/Barlow Twins.

    For parameters of a group with ``lars=True``: ``g ← g + wd·w`` then
    ``g ← g · η‖w‖/‖g‖`` (when both norms are positive), then heavy-ball momentum. Groups with
    ``lars=False`` (biases and normalisation parameters, see :func:`param_groups`) get plain
    momentum SGD with no weight decay and no adaptation.
    """

    def __init__(
        self,
        params: Iterable[dict[str, object]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "eta": eta,
            "lars": True,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: object = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if group["lars"]:
                    d = d.add(p, alpha=group["weight_decay"])
                    w_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    one = torch.ones_like(w_norm)
                    trust = torch.where(
                        (w_norm > 0) & (d_norm > 0), group["eta"] * w_norm / d_norm, one
                    )
                    d = d.mul(trust)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(d)
                p.add_(mu, alpha=-group["lr"])


def param_groups(
    model: nn.Module, weight_decay: float, decay_all: bool = False
) -> list[dict[str, object]]:
    """Weights (≥ 2-D) get weight decay and LARS adaptation; biases and norm parameters not
    (weight decay too with ``decay_all``, as a plain ``SGD(model.parameters(), ...)``). An
    online linear head (``online_head``) is left to its own optimiser."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad and not name.startswith("online_head."):  # its own optimiser
            (decay if p.ndim > 1 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "lars": True},
        {"params": no_decay, "weight_decay": weight_decay if decay_all else 0.0, "lars": False},
    ]


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    o = cfg.optim
    lr = effective_lr(cfg)
    groups = param_groups(model, o.weight_decay, o.decay_all)
    if o.name == "lars":
        return LARS(groups, lr=lr, momentum=o.momentum, eta=o.lars_eta)
    for g in groups:
        g.pop("lars")
    # foreach: a few multi-tensor launches per step instead of a handful per parameter (the
    # default on CUDA already; the same numbers, so the CPU counts what a GPU runs)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=o.momentum, foreach=True)
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=lr, foreach=True)
    return torch.optim.AdamW(groups, lr=lr, foreach=True)


def lr_at_step(cfg: Config, step: int, steps_per_epoch: int) -> float:
    """Linear warmup over ``warmup_steps`` or ``warmup_epochs`` (per step), then cosine to
    ``min_lr_ratio`` or flat."""
    peak = effective_lr(cfg)
    total = cfg.train.epochs * steps_per_epoch
    warmup = cfg.optim.warmup_steps or round(cfg.optim.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return peak * (step + 1) / warmup
    if cfg.optim.schedule == "constant":
        return peak
    if cfg.optim.schedule == "cosine_epoch":  # constant within an epoch, as an epoch scheduler
        progress = min(1.0, (step // steps_per_epoch) / cfg.train.epochs)
    else:
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = peak * cfg.optim.min_lr_ratio
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))
