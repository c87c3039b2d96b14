"""Optimisers: LARS by hand, SGD/Adam/AdamW from PyTorch, over parameter groups that keep
weight decay and LARS off biases and norms. (The learning-rate schedule a run's config asks for
is :func:`manifold_ssl.run.build.lr_at_step`, on :mod:`manifold_ssl.schedules`.)

:func:`graph_update` is an optimiser's step as one compiled graph takes it
(:mod:`manifold_ssl.training.whole_step`): the same update, through PyTorch's functional
optimisers, with the learning rate a device tensor (a float would be a constant of the graph,
and a new learning rate a recompile).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.adam import adam as _adam
from torch.optim.sgd import sgd as _sgd

__all__ = ["LARS", "graph_update", "make_optimizer", "param_groups"]


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
            _lars_group(self, group, group["lr"])


def _lars_group(opt: LARS, group: dict[str, Any], lr: float | torch.Tensor) -> None:
    """LARS's update of the parameters of ``group`` at learning rate ``lr``."""
    for p in group["params"]:
        if p.grad is None:
            continue
        d = p.grad
        if group["lars"]:
            d = d.add(p, alpha=group["weight_decay"])
            w_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
            one = torch.ones_like(w_norm)
            trust = torch.where((w_norm > 0) & (d_norm > 0), group["eta"] * w_norm / d_norm, one)
            d = d.mul(trust)
        state = opt.state[p]
        if "mu" not in state:
            state["mu"] = torch.zeros_like(p)
        mu = state["mu"]
        mu.mul_(group["momentum"]).add_(d)
        if isinstance(lr, torch.Tensor):
            p.sub_(mu * lr)
        else:
            p.add_(mu, alpha=-lr)


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
    fused: bool = True,
) -> torch.optim.Optimizer:
    """Optimiser ``name`` (``lars``, ``sgd``, ``adam``, ``adamw``) over :func:`param_groups`;
    PyTorch's fused kernels for parameters on CUDA unless ``fused=False``."""
    groups = param_groups(model, weight_decay, decay_all)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, eta=lars_eta)
    for g in groups:
        g.pop("lars")
    # foreach: a few multi-tensor launches per step instead of a handful per parameter (the
    # default on CUDA already; the same numbers, so the CPU counts what a GPU runs); fused:
    # one kernel per step, on CUDA only (the CPU keeps the foreach form the tests compare);
    # capturable on CUDA: Adam's step counters on the device, as a CUDA graph replays them
    cuda = any(p.is_cuda for g in groups for p in g["params"])  # type: ignore[attr-defined]
    kind = {"fused": True} if cuda and fused else {"foreach": True}
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, **kind)
    adam = {**kind, "capturable": True} if cuda else kind
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, **adam)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, **adam)
    raise ValueError(f"unknown optimiser {name!r}; expected lars, sgd, adam or adamw")


def graph_update(
    opt: torch.optim.Optimizer,
) -> Callable[[torch.Tensor | float], None]:
    """The step of ``opt`` (:class:`LARS`, ``SGD``, ``Adam``, ``AdamW``, as
    :func:`make_optimizer` makes them) as a function of the learning rate ``lr`` for every
    group, traceable as part of one graph: PyTorch's ``Optimizer.step`` breaks the graph on
    purpose, so its functional form is called on the optimiser's own state. The groups'
    settings and state are read here, once (a graph that read ``param_groups`` would guard on
    its ``lr`` and recompile at each new value); the state must exist (an eager step first:
    the whole-step graph's first step is eager, to count its FLOPs). Call the result under
    ``torch.no_grad()`` with ``lr`` a 0-dim tensor on the parameters' device (or a float, a
    constant of the graph)."""
    updates: list[Callable[[torch.Tensor | float], None]] = []
    for group in opt.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        settings = {k: v for k, v in group.items() if k not in ("params", "lr")}
        if isinstance(opt, LARS):
            updates.append(_lars_update(opt, params, settings))
        elif isinstance(opt, torch.optim.SGD):
            updates.append(_sgd_update(opt, params, settings))
        elif isinstance(opt, torch.optim.Adam):  # AdamW too (decoupled weight decay)
            updates.append(_adam_update(opt, params, settings))
        else:
            raise ValueError(
                f"a whole-step graph takes LARS, SGD, Adam or AdamW, not {type(opt).__name__}"
            )

    def update(lr: torch.Tensor | float) -> None:
        for one in updates:
            one(lr)

    return update


def _lars_update(
    opt: LARS, params: list[torch.Tensor], settings: dict[str, Any]
) -> Callable[[torch.Tensor | float], None]:
    group = {**settings, "params": params}
    for p in params:
        opt.state[p].setdefault("mu", torch.zeros_like(p))

    def update(lr: torch.Tensor | float) -> None:
        _lars_group(opt, group, lr)

    return update


def _sgd_update(
    opt: torch.optim.Optimizer, params: list[torch.Tensor], settings: dict[str, Any]
) -> Callable[[torch.Tensor | float], None]:
    buffers = [opt.state[p].get("momentum_buffer") for p in params]

    def update(lr: torch.Tensor | float) -> None:
        _sgd(
            params,
            [p.grad for p in params],  # type: ignore[misc]
            buffers,
            foreach=settings["foreach"],
            fused=settings["fused"],
            weight_decay=settings["weight_decay"],
            momentum=settings["momentum"],
            lr=lr,
            dampening=settings["dampening"],
            nesterov=settings["nesterov"],
            maximize=settings["maximize"],
        )

    return update


def _adam_update(
    opt: torch.optim.Optimizer, params: list[torch.Tensor], settings: dict[str, Any]
) -> Callable[[torch.Tensor | float], None]:
    if settings["amsgrad"]:
        raise ValueError("a whole-step graph takes Adam without amsgrad")
    states = [opt.state[p] for p in params]
    exp_avgs = [s["exp_avg"] for s in states]
    exp_avg_sqs = [s["exp_avg_sq"] for s in states]
    steps = [s["step"] for s in states]
    capturable = bool(settings["capturable"])

    def update(lr: torch.Tensor | float) -> None:
        _adam(
            params,
            [p.grad for p in params],  # type: ignore[misc]
            exp_avgs,
            exp_avg_sqs,
            [],
            steps,
            # a tensor lr needs capturable (device step counters) for foreach and fused; on
            # the CPU the per-tensor form, which the compiler fuses anyway
            foreach=bool(settings["foreach"]) and capturable,
            capturable=capturable,
            fused=settings["fused"],
            decoupled_weight_decay=bool(settings.get("decoupled_weight_decay", False)),
            amsgrad=False,
            beta1=settings["betas"][0],
            beta2=settings["betas"][1],
            lr=lr,
            weight_decay=settings["weight_decay"],
            eps=settings["eps"],
            maximize=settings["maximize"],
        )

    return update
