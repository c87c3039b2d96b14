"""Optimisers: LARS by hand, SGD/Adam/AdamW from PyTorch, over parameter groups that keep
weight decay and LARS off biases and norms. (The learning-rate schedule a run's config asks for
is :func:`manifold_ssl.run.build.lr_at_step`, on :mod:`manifold_ssl.schedules`.)"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["LARS", "make_optimizer", "param_groups"]


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


def make_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    decay_all: bool = False,
    lars_eta: float = 0.001,
) -> torch.optim.Optimizer:
    """Optimiser ``name`` (``lars``, ``sgd``, ``adam``, ``adamw``) over :func:`param_groups`."""
    groups = param_groups(model, weight_decay, decay_all)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, eta=lars_eta)
    for g in groups:
        g.pop("lars")
    # foreach: a few multi-tensor launches per step instead of a handful per parameter (the
    # default on CUDA already; the same numbers, so the CPU counts what a GPU runs)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, foreach=True)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, foreach=True)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, foreach=True)
    raise ValueError(f"unknown optimiser {name!r}; expected lars, sgd, adam or adamw")
