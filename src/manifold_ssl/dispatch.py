"""What a GPU would see of a training step, counted on any device: device operations (each a
kernel launch) and host reads (each a synchronisation that drains the launch queue).

:class:`DispatchCounter` is a ``TorchDispatchMode``: every aten operation that reaches a
backend passes through it. A *host read* is an operation whose result the host must wait for:
a tensor's value read as a Python number (``aten._local_scalar_dense``: ``.item()``,
``float(t)``, ``bool(t)``, ``if t:``), an output whose size depends on the values
(``nonzero``, boolean-mask indexing, ``masked_select``, ``unique``, ``repeat_interleave``
without ``output_size``, ``bincount``), or a comparison that returns a Python bool
(``equal``, ``is_nonzero``).

An optimiser's read of its own step counter (Adam's ``state["step"]``, a CPU tensor unless the
optimiser is ``capturable``) is a read of host memory, not of the device: the counter sees
every optimiser that steps inside it (a global ``register_optimizer_step_pre_hook``) and counts
reads of their state tensors apart (``exempt_reads``), by the tensors' identity.

Written here because no library counts host synchronisations on a CPU-only machine:
``torch.cuda.set_sync_debug_mode`` needs CUDA, and the profiler reports kernels, not the reads
that stall them.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["DispatchCounter", "cpu_only", "host_side", "is_host_read"]

_HOST_SIDE = contextvars.ContextVar("host_side", default=False)
_CPU_ONLY = contextvars.ContextVar("cpu_only", default=False)


@contextlib.contextmanager
def _marked(flag: contextvars.ContextVar[bool]) -> Iterator[None]:
    token = flag.set(True)
    try:
        yield
    finally:
        flag.reset(token)


def cpu_only() -> contextlib.AbstractContextManager[None]:
    """Mark a host read that the code makes only when its tensors are on the CPU (where reading
    one costs nothing; an accelerator takes a fixed-shape path instead): a counter puts it in
    ``cpu_only_reads``."""
    return _marked(_CPU_ONLY)


def host_side() -> contextlib.AbstractContextManager[None]:
    """Mark work done on the host whatever the training device (random view parameters drawn
    with a CPU generator, packed for one copy): a counter puts its ops in ``host_ops``, as a
    GPU would never see them."""
    return _marked(_HOST_SIDE)


_READS = {
    "_local_scalar_dense",
    "nonzero",
    "argwhere",
    "masked_select",
    "_unique",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "bincount",
    "equal",
    "is_nonzero",
    "allclose",
}
#: Not device work: metadata, views and aliases that launch no kernel.
_FREE = {
    "view",
    "_unsafe_view",
    "reshape",
    "alias",
    "detach",
    "t",
    "transpose",
    "permute",
    "expand",
    "squeeze",
    "unsqueeze",
    "as_strided",
    "slice",
    "select",
    "unbind",
    "split",
    "split_with_sizes",
    "chunk",
    "narrow",
    "diagonal",
    "lift_fresh",
    "empty",
    "empty_like",
    "empty_strided",
    "_reshape_alias",
    "unflatten",
    "flatten",
    "sym_size",
    "sym_stride",
    "sym_numel",
    "sym_storage_offset",
    "is_same_size",
    "_has_compatible_shallow_copy_type",
    "set_",
    "resize_",
}


def _name(func: Any) -> str:
    return func.overloadpacket.__name__


def is_host_read(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether the aten op ``func`` called with ``args`` makes the host wait for the device."""
    name = _name(func)
    if name in _READS:
        return True
    if name == "repeat_interleave":
        return kwargs.get("output_size") is None and not (len(args) > 2 and args[2] is not None)
    if name in ("index", "_index_put_impl_", "index_put", "index_put_"):
        indices = args[1] if len(args) > 1 else ()
        return any(
            isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
            for i in indices or ()
        )
    return False


class DispatchCounter(TorchDispatchMode):
    """Count device operations and host reads inside a ``with`` block.

    ``ops``: operations that launch work (views and metadata left out); ``reads``: host reads
    by operation name; ``exempt_reads``: reads of the optimisers' state tensors;
    ``host_ops``: operations inside :func:`host_side` (host work on any device);
    ``cpu_only_reads``: reads inside :func:`cpu_only` of CPU tensors.
    """

    def __init__(self) -> None:
        super().__init__()
        self.optimizers: list[torch.optim.Optimizer] = []
        self._hook: Any = None
        self.ops = 0
        self.by_op: Counter[str] = Counter()
        self.reads: Counter[str] = Counter()
        self.exempt_reads = 0
        self.host_ops = 0
        self.cpu_only_reads = 0

    def __enter__(self) -> DispatchCounter:
        # every optimiser that steps inside the block: its state tensors' reads are exempt
        def seen(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            if all(o is not opt for o in self.optimizers):
                self.optimizers.append(opt)

        self._hook = register_optimizer_step_pre_hook(seen)
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._hook.remove()
        super().__exit__(*exc)

    def _exempt_ids(self) -> set[int]:
        return {
            id(v)
            for opt in self.optimizers
            for state in opt.state.values()
            for v in state.values()
            if isinstance(v, torch.Tensor)
        }

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        name = _name(func)
        if _HOST_SIDE.get():
            self.host_ops += 1
            return func(*args, **kwargs)
        if is_host_read(func, args, kwargs):
            first = args[0] if args else None
            if isinstance(first, torch.Tensor) and id(first) in self._exempt_ids():
                self.exempt_reads += 1
            elif _CPU_ONLY.get() and isinstance(first, torch.Tensor) and first.device.type == "cpu":
                self.cpu_only_reads += 1
            else:
                self.reads[name] += 1
        if name not in _FREE:
            self.ops += 1
            self.by_op[name] += 1
        return func(*args, **kwargs)

    @property
    def host_reads(self) -> int:
        return sum(self.reads.values())


def per_step_counts(run: Callable[[int], object], short: int = 3, long: int = 7) -> dict[str, Any]:
    """Marginal counts per ordinary training step: ``run(steps)`` trains a run of ``steps``
    steps (logging off but for the first and last step, no checkpoints or probes between);
    the counts of a ``long`` run less a ``short`` one, over the steps between."""
    counted = []
    for steps in (short, long):
        with DispatchCounter() as c:
            run(steps)
        counted.append(c)
    a, b = counted
    n = long - short
    return {
        "ops": (b.ops - a.ops) / n,
        "host_reads": (b.host_reads - a.host_reads) / n,
        "reads": dict(b.reads - a.reads),
        "host_ops": (b.host_ops - a.host_ops) / n,
        "exempt_reads": (b.exempt_reads - a.exempt_reads) / n,
        "cpu_only_reads": (b.cpu_only_reads - a.cpu_only_reads) / n,
    }
