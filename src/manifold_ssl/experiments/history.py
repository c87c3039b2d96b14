"""Geometry over a run's history: the training-time probes measured on every kept checkpoint.

``train.keep_every`` keeps ``checkpoints/epoch-<N>.pt`` every N epochs (``train.keep_limit``
the newest of them), ``train.keep_best`` ``checkpoints/best.pt`` at the best monitor value. This
module measures each kept checkpoint as the probes of :mod:`manifold_ssl.probes` measure a
training run (``probes`` section: percent error, effective rank, alignment and uniformity,
CLAMP's packing, mean-field capacity, kNN, gradient coherence within and across classes with
its shuffled-label control), on the same fixed validation images and views for every
checkpoint, and draws them against training (Yerxa et al. Fig. 3, CLAMP Fig. 3), after the run
instead of during it: ``manifold-ssl analyze RUN --checkpoints all``.
"""

from __future__ import annotations

import filecmp
import os
import re
from pathlib import Path
from typing import Any

import torch

from ..run.build import splits_of, training_probe
from ..run.record import RunDir, checkpoint_name, method_from_state
from ..runinfo import write_json

__all__ = ["analyze_history", "distinct_checkpoints", "kept_checkpoints"]

_EPOCH = re.compile(r"^epoch-(\d+)\.pt$")


def kept_checkpoints(run: RunDir) -> list[str]:
    """The run's kept checkpoint files, by name: ``epoch-<N>.pt`` by N, then ``best.pt`` and
    ``last.pt`` (each file once: :func:`distinct_checkpoints` merges names of one file)."""
    kept = run.kept()
    epochs = sorted((int(m.group(1)), n) for n in kept if (m := _EPOCH.match(n)))
    return [n for _, n in epochs] + [n for n in ("best.pt", "last.pt") if n in kept]


def distinct_checkpoints(run: RunDir, names: list[str]) -> dict[str, list[str]]:
    """``names`` grouped by file identity: ``{name: [other names of the same file]}``. Names
    are one file when they are one inode (``last.pt`` a hard link of the newest ``epoch-N``)
    or hold the same bytes (a copy where the file system does not link)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        path = run.checkpoint_file(name)
        same = next(
            (
                first
                for first in groups
                if os.path.samefile(path, run.checkpoint_file(first))
                or filecmp.cmp(path, run.checkpoint_file(first), shallow=False)
            ),
            None,
        )
        if same is None:
            groups[name] = []
        else:
            groups[same].append(name)
    return groups


def _resolve(run: RunDir, which: str | list[str]) -> list[str]:
    if which == "all":
        names = kept_checkpoints(run)
    else:
        items = which.split(",") if isinstance(which, str) else which
        names = [checkpoint_name(n) for n in (i.strip() for i in items) if n]
    missing = [n for n in names if not run.checkpoint_file(n).is_file()]
    if missing or not names:
        kept = ", ".join(kept_checkpoints(run)) or "none"
        raise ValueError(
            f"--checkpoints: {', '.join(missing) or 'nothing'} not in {run.path}/checkpoints "
            f"(kept: {kept}); keep a history with --train.keep_every=N"
        )
    return names


def _check_image_views(run: RunDir) -> None:
    """Refuse, before anything is loaded, a run of an image-caption method: the probes measure
    an objective of image views (its gradient coherence, its views' packing), which it has none
    of; say what such a run has instead."""
    from ..methods import MULTIMODAL

    name = run.config().method.name
    if name in MULTIMODAL:
        raise ValueError(
            f"analyze --checkpoints measures the training probes, which need an objective of "
            f"image views; {run.path} trains the image-caption method {name}, which has none. "
            f"For its checkpoints use: manifold-ssl analyze {run.path} (the geometry of the "
            f"image encoder on the test split, last.pt), manifold-ssl analyze "
            f"{run.path}/checkpoints/NAME.pt (one kept checkpoint), or manifold-ssl evaluate "
            f"{run.path} --checkpoint NAME (kNN, linear probe and zero-shot)"
        )


def analyze_history(
    run_dir: str | Path,
    which: str | list[str] = "all",
    out: str | Path | None = None,
    device: torch.device | str = "cpu",
) -> list[dict[str, Any]]:
    """Probe each checkpoint ``which`` (``"all"``, or names such as ``epoch-0005,best``) of
    the run ``run_dir``, each checkpoint once (one file, or one step); rows ``{checkpoint,
    same_as, step, epoch, probe/...}`` (``same_as``: its other names) in training order,
    written to ``out/history.json`` with the probes' figures (default ``out``:
    ``run_dir/analysis/history``)."""
    run = RunDir(run_dir)
    _check_image_views(run)
    out_dir = Path(out) if out is not None else run.path / "analysis" / "history"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "probes" / "pair_distances.jsonl").unlink(missing_ok=True)
    with run.lock():
        names = _resolve(run, which)
        cfg = run.config()
        splits = splits_of(cfg)
        probe = training_probe(cfg, splits, torch.device(device), out_dir)
        rows: list[dict[str, Any]] = []
        for name, aliases in distinct_checkpoints(run, names).items():
            trained, state = run.trained(name)
            prior = next((r for r in rows if r["step"] == state["step"]), None)
            if prior is not None:  # one run's weights at one step: the same checkpoint
                prior["same_as"] += [name, *aliases]
                continue
            method = method_from_state(trained, state, splits, device, "analyze")
            values = probe(method, int(state["step"]))
            rows.append(
                {
                    "checkpoint": name,
                    "same_as": aliases,
                    "step": state["step"],
                    "epoch": state["epoch"],
                    **values,
                }
            )
    rows.sort(key=lambda r: r["step"])  # stable: at one step, the names' order
    write_json(out_dir / "history.json", rows)
    from .plots import plot_probe_records

    plot_probe_records(out_dir, rows, out_dir)
    return rows
