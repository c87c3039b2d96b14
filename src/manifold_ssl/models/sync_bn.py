"""Batch normalisation over the global batch on any backend.

``torch.nn.SyncBatchNorm`` only runs on GPUs. :class:`GlobalBatchNorm` does the same on CPU
(gloo): per-channel sums and sums of squares are added over ranks with the autograd-aware
all-reduce of :mod:`manifold_ssl.distributed`, so statistics, outputs and gradients equal one
process's on the global batch. :func:`convert_sync_batchnorm` picks PyTorch's on CUDA and this
one elsewhere.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import distributed as dist_utils

__all__ = ["GlobalBatchNorm", "convert_sync_batchnorm"]


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm1d/2d whose training statistics span all ranks (biased variance to normalise,
    unbiased variance in the running estimate, as BatchNorm)."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 3, 4, 5):
            raise ValueError(f"expected 2-D to 5-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist_utils.is_distributed()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        count = x.numel() // x.shape[1]
        stats = torch.cat([x.sum(dims), (x * x).sum(dims)])
        stats = dist_utils.all_reduce_sum(stats)
        n = dist_utils.global_count(count, x.device)
        mean, sq = stats.chunk(2)
        mean = mean / n
        var = (sq / n - mean * mean).clamp_min(0)
        if (
            self.track_running_stats
            and self.running_mean is not None
            and self.running_var is not None
        ):
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / max(n - 1, 1), alpha=m)
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(1)
        shape = [1, -1] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of ``module`` normalising over the global batch (see the module doc)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, GlobalBatchNorm
    ):
        out = GlobalBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        if module.affine:
            with torch.no_grad():
                out.weight.copy_(module.weight)
                out.bias.copy_(module.bias)
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, device))
    return out
