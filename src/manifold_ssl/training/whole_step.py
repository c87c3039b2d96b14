"""The whole training step as one compiled graph (``train.compile: step``).

Forward (bf16 autocast with ``amp``), objective, backward, the optimisers' steps
(:func:`~manifold_ssl.training.optim.graph_update`), the online head's and the EMA target's
updates are traced by ``torch.compile(fullgraph=True)`` into one graph: a graph break is an
error, and so is any host read (a ``.item()``, a data-dependent shape), so the compiled step
makes no host synchronisation. The learning rate and the EMA coefficient enter as 0-dim
device tensors, filled before each call (an asynchronous copy): as floats they would be
constants of the graph, and each new value a recompile. On CUDA the graph is replayed as a
CUDA graph (``mode="reduce-overhead"``, shapes being static: ``drop_last`` batches); on other
devices it runs as compiled.

The first step of each invocation of the loop is eager (:func:`~manifold_ssl.training.loop.
train_step`): it counts the FLOPs and creates the optimisers' state, which the graph then
updates in place; the compiled step starts at the second. One process only (a DDP wrapper's
hooks are not part of a graph): the loop refuses ``train.compile: step`` under DDP.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._validation import finiteness_deferred
from .optim import graph_update

__all__ = ["WholeStep"]


class WholeStep:
    """The step of ``method`` with optimiser ``opt`` (and ``head_opt``, the online head's) as
    one graph; call it as ``step(batch, labels, lr, tau)``.

    Args:
        method: an ``SSLMethod`` or ``MultimodalMethod`` (not a DDP wrapper), on its device.
        opt: its optimiser, with state (after one eager step).
        head_opt: the online head's optimiser, or None.
        amp: bf16 autocast in the forward.
        nonfinite: a device flag set when a step's loss is not finite.
        backend: ``torch.compile``'s backend (``inductor``; ``aot_eager`` traces and runs the
            same graph without a compiler, as the tests do).
    """

    def __init__(
        self,
        method: nn.Module,
        opt: torch.optim.Optimizer,
        head_opt: torch.optim.Optimizer | None,
        amp: bool,
        nonfinite: torch.Tensor,
        backend: str = "inductor",
    ) -> None:
        device = next(method.parameters()).device
        self.method, self.opt, self.head_opt = method, opt, head_opt
        self.amp, self.device_type = amp, device.type
        self.nonfinite = nonfinite
        self.lr = torch.zeros((), device=device)
        self.tau = torch.ones((), device=device)
        self.head_lr = float(head_opt.param_groups[0]["lr"]) if head_opt is not None else 0.0
        self.update = graph_update(opt)
        self.head_update = graph_update(head_opt) if head_opt is not None else None
        trainable = [p for g in opt.param_groups for p in g["params"]]
        if head_opt is not None:
            trainable += [p for g in head_opt.param_groups for p in g["params"]]
        self.trainable: list[torch.Tensor] = trainable
        cuda_graph = device.type == "cuda" and backend == "inductor"
        if cuda_graph:  # optimiser state and the scalars keep their addresses across replays
            for t in [self.lr, self.tau, *_state_tensors(opt), *_state_tensors(head_opt)]:
                torch._dynamo.mark_static_address(t)
        self.compiled = torch.compile(
            self._step,
            fullgraph=True,
            backend=backend,
            mode="reduce-overhead" if cuda_graph else None,
        )

    def __call__(
        self, batch: Any, labels: torch.Tensor | None, lr: float, tau: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """One step on ``batch`` (views, or views and tokens) with ``labels`` for the online
        head, at learning rate ``lr`` and EMA coefficient ``tau``; ``(loss, terms, z)``."""
        self.lr.fill_(lr)
        self.tau.fill_(tau)
        # the losses' input checks deferred (a check is a host read): the loss is checked
        # on the device instead; tracing Tensor.backward into the graph
        with finiteness_deferred(), torch._dynamo.config.patch(trace_autograd_ops=True):
            loss, terms, z, finite = self.compiled(batch, labels)
        self.nonfinite.logical_or_(~finite)
        return loss, terms, z

    def _step(
        self, batch: Any, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.amp):
            loss, terms, z = self.method(batch) if labels is None else self.method(batch, labels)
        for p in self.trainable:  # Optimizer.zero_grad(set_to_none=True), traceable
            p.grad = None
        (loss + terms["online_ce"] if "online_ce" in terms else loss).backward()
        with torch.no_grad():
            self.update(self.lr)
            if self.head_update is not None:
                self.head_update(self.head_lr)
            self.method.after_step(self.tau)  # type: ignore[operator]
        loss = loss.detach()
        return loss, {k: v.detach() for k, v in terms.items()}, z, torch.isfinite(loss)


def _state_tensors(opt: torch.optim.Optimizer | None) -> list[torch.Tensor]:
    if opt is None:
        return []
    return [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
