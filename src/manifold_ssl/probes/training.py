"""Geometry probed during training on a fixed probe set (config section ``probes``).

The probe runs on rank 0 alone under DDP, inside ``distributed.local_only()``: the objectives it
evaluates (for the embeddings and the gradient coherence) then gather nothing from the other
ranks, which are training on.

Every ``probes.every_steps`` steps (and at step 0 with ``probes.at_start``) the network in eval
mode embeds a fixed set of validation images under fixed views (drawn once from the probe's own
seed, so successive probes see identical inputs and the training RNG is untouched), and logs to
``metrics.jsonl`` under ``probe/``:

- ``percent_error`` (Schaeffer Eq. 4) and ``effective_rank`` (RankMe) of the probe set;
- ``alignment`` E‖u − u⁺‖² over pairs of views and ``uniformity`` log E exp(−2‖u − v‖²) over
  different images (Wang & Isola 2020, normalised embeddings);
- CLAMP's mean ``neighbours`` and sub-manifold ``size`` (Sec. 5, Fig. 3;
  ``probes.clamp_convention``), and the histogram of pairwise embedding distances into
  ``probes/pair_distances.jsonl`` (Fig. 3c);
- the mean-field ``capacity``, ``radius`` and ``dimension`` of ``probes.capacity_manifolds``
  augmentation manifolds (Yerxa Sec. 3);
- ``knn_accuracy`` of the probe images against ``probes.knn_bank`` training images;
- gradient coherence (Yerxa Sec. 3.2, Fig. 3): the cosine between the objective's gradients for
  batches of one class each, averaged within and across classes, for all parameters and the
  first and last layers, and for batches grouped by shuffled labels (the control, averaged over
  4 permutations, where within and across should agree); ``coherence/<group>/<within|across>``;
- ``seconds``, the probe's wall time, and ``flops``, its counted cost.

Which steps are probed depends on the config alone, never on the clock or the machine's load:
the multiples of ``probes.every_steps`` (and step 0 with ``probes.at_start``), of which a probe
is skipped when the probes so far and it would exceed ``probes.max_cost`` of the training so
far, both counted in FLOPs (``torch.utils.flop_counter``: matrix products and convolutions; a
training step's as the loop counts it, a probe's measured on the first one: its embeddings,
kNN features and coherence gradients; its capacity solves and histograms are not counted).
The run's last step is always probed, and :meth:`TrainingProbe.summary` says how many probes
the budget skipped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..data.splits import DataSplits, as_tensors
from ..data.views import AugmentSpec, MultiViewAugment
from ..distributed import local_only
from ..evaluation.coherence import coherence_with_control
from ..evaluation.features import extract_features
from ..evaluation.knn import knn_accuracy
from ..geometry.capacity import manifold_capacity
from ..geometry.manifold_stats import packing_statistics
from ..geometry.spectral import effective_rank, percent_error
from ..losses.wang_isola import alignment_loss, uniformity_loss
from ..methods import MultimodalMethod, SSLMethod
from .settings import ProbesConfig

__all__ = ["TrainingProbe", "alignment_uniformity"]


def alignment_uniformity(z: torch.Tensor) -> tuple[float, float]:
    """Alignment over every pair of views and uniformity over the first view (Wang & Isola
    2020, α = 2, t = 2) of (B, m, D) embeddings."""
    u = z.double()
    m = u.shape[1]
    pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
    align = torch.stack([alignment_loss(u[:, i], u[:, j]) for i, j in pairs]).mean()
    return float(align), float(uniformity_loss(u[:, 0]))


class TrainingProbe:
    """The probes of one run; the training loop asks :meth:`due` after every step."""

    def __init__(
        self,
        settings: ProbesConfig,
        splits: DataSplits,
        device: torch.device,
        run_dir: Path,
        specs: tuple[AugmentSpec, ...],
        num_views: int,
        knn: tuple[int, float] = (200, 0.1),
        packing: tuple[float, str] = (7.0, "paper"),
    ):
        """Probes of ``settings`` on ``splits`` into ``run_dir``: views of ``specs`` (K =
        ``settings.views`` or ``num_views``), the kNN's ``(k, temperature)``, CLAMP's neighbour
        count ``(r_s, convention)`` (``paper`` or ``official``)."""
        p = settings
        self.settings, self.every, self.device = settings, p.every_steps, device
        self.knn_k, self.knn_temperature = knn
        self.packing = packing
        self.out = run_dir / "probes" / "pair_distances.jsonl"
        gen = torch.Generator().manual_seed(p.seed)
        val = splits.val
        idx = torch.randperm(len(val.labels), generator=gen)[: p.images]
        images = as_tensors(val.subset(idx)).images
        self.labels = val.labels[idx]
        self.mean, self.std = splits.normalisation
        aug = MultiViewAugment(specs, p.views or num_views)
        self.views = aug(images, gen).to(device)  # fixed: drawn once
        self.images = images
        bank = torch.randperm(len(splits.train.labels), generator=gen)[: p.knn_bank]
        self.bank_images = as_tensors(splits.train.subset(bank)).images
        self.bank_labels = splits.train.labels[bank]
        self.num_classes = splits.num_classes
        self.at_start = p.at_start
        self.probe_flops = 0  # FLOPs of one probe, counted on the first
        self.taken = 0  # probes at multiples of the interval (and step 0)
        self.skipped = 0  # of those, skipped by the budget
        self.last_step = -1  # the step last probed
        self._restore(run_dir)

    def _restore(self, run_dir: Path) -> None:
        """A resumed run's probes so far (its metrics, truncated at the resumed step)."""
        from ..runinfo import read_metrics

        done = [r for r in read_metrics(run_dir / "metrics.jsonl") if "probe/flops" in r]
        if done:
            self.probe_flops = int(done[-1]["probe/flops"])
            self.taken = sum(self.planned(int(r["step"])) for r in done)
            self.last_step = int(done[-1]["step"])

    def planned(self, step: int) -> bool:
        """Whether ``step`` is on the schedule (a multiple of the interval, or the start)."""
        if self.every <= 0:
            return False
        return (step == 0 and self.at_start) or (step > 0 and step % self.every == 0)

    def due(self, step: int, trained_flops: int, last: bool = False) -> bool:
        """Whether to probe after ``step`` steps of ``trained_flops`` training FLOPs (this
        process's): a planned step whose probe fits in ``max_cost`` of the training with the
        probes so far, step 0, or the run's ``last`` step (not already probed)."""
        if self.every <= 0 or step == self.last_step:
            return False
        if last:
            return True
        if not self.planned(step):
            return False
        cost = (self.taken + 1) * self.probe_flops  # 0 before the first probe: always fits
        if step == 0 or cost <= self.settings.max_cost * trained_flops:
            return True
        self.skipped += 1
        return False

    def summary(self) -> str | None:
        """A closing line when the budget skipped probes."""
        if not self.skipped:
            return None
        return (
            f"{self.skipped} of {self.skipped + self.taken} probes skipped by "
            f"probes.max_cost={self.settings.max_cost:g} (a probe counts "
            f"{self.probe_flops:.3g} FLOPs); raise probes.every_steps or probes.max_cost"
        )

    def __call__(self, method: SSLMethod | MultimodalMethod, step: int) -> dict[str, float]:
        if not isinstance(method, SSLMethod):  # the config refuses probes of these
            raise TypeError(f"the training probes measure image views, not {method.name}")
        with local_only(), torch.no_grad():  # rank 0 alone: its losses must gather nothing
            return self._probe(method, step)

    def _probe(self, method: SSLMethod, step: int) -> dict[str, float]:
        start = time.perf_counter()
        counter = FlopCounterMode(display=False)
        was_training = method.training
        method.eval()  # running statistics stay as training left them
        try:
            with counter:
                out, z = self._measure(method)
        finally:
            method.train(was_training)
        self._write_distances(z, step)
        if not self.probe_flops:
            self.probe_flops = int(counter.get_total_flops())
        self.taken += self.planned(step)
        self.last_step = step
        out["seconds"] = time.perf_counter() - start
        out["flops"] = self.probe_flops
        return {f"probe/{k}": v for k, v in out.items()}

    def _measure(self, method: SSLMethod) -> tuple[dict[str, float], torch.Tensor]:
        """The probe's measurements (``probe/`` names without the prefix) and embeddings."""
        _, _, z = method(self.views)
        out = self._geometry(z.float().cpu())
        if self.settings.coherence and self.num_classes > 1:
            loss_of = lambda views: method(views)[0]  # noqa: E731
            res = coherence_with_control(
                method, loss_of, self.views, self.labels, self.settings.seed
            )
            out.update({f"coherence/{k}": v for k, v in res.items()})
        if self.settings.knn_bank and self.num_classes > 1:
            out["knn_accuracy"] = self._knn(method.backbone)
        return out, z

    def _geometry(self, z: torch.Tensor) -> dict[str, float]:
        zn = F.normalize(z, dim=-1)
        align, uniform = alignment_uniformity(z)
        packing = packing_statistics(z, *self.packing)
        out = {
            "percent_error": float(percent_error(zn.mean(dim=1))),
            "effective_rank": float(effective_rank(zn[:, 0])),
            "alignment": align,
            "uniformity": uniform,
            "neighbours": float(packing["neighbours"].mean()),
            "size": float(packing["size"].mean()),
        }
        n = self.settings.capacity_manifolds
        if n and z.shape[1] > 1:
            cap = manifold_capacity(zn[:n].double().numpy(), n_t=50, seed=self.settings.seed)
            out.update(capacity=cap.capacity, radius=cap.radius, dimension=cap.dimension)
        return out

    def _knn(self, backbone: nn.Module) -> float:
        feats = [
            extract_features(backbone, x, self.mean, self.std, device=self.device)
            for x in (self.bank_images, self.images)
        ]
        k = min(self.knn_k, len(self.bank_labels))
        return knn_accuracy(
            feats[0],
            self.bank_labels,
            feats[1],
            self.labels,
            self.num_classes,
            k,
            self.knn_temperature,
        )

    def _write_distances(self, z: torch.Tensor, step: int) -> None:
        u = F.normalize(z[:, 0].float(), dim=-1)
        d = torch.pdist(u.cpu())
        counts = torch.histc(d, bins=40, min=0.0, max=2.0)
        self.out.parent.mkdir(exist_ok=True)
        with open(self.out, "a") as f:
            f.write(
                json.dumps({"step": step, "edges": [0.0, 2.0], "counts": counts.tolist()}) + "\n"
            )

    def resume_at(self, step: int) -> None:
        """Continue a resumed run's schedule: the probes it skipped before ``step`` are counted
        (what :meth:`_restore` read holds the ones taken)."""
        if step > 0 and self.every > 0:
            planned = step // self.every + int(self.at_start)
            self.skipped = max(0, planned - self.taken)
