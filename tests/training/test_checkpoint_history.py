"""A run's checkpoint history (train.keep_*): epoch checkpoints with a retention limit, the best
monitor value's checkpoint across a resume, geometry measured over the history, and evaluate
and export of any kept checkpoint."""

from __future__ import annotations

import json
import os

import pytest
from helpers import tiny_run_args

from manifold_ssl.cli import main
from manifold_ssl.config import apply_overrides, load_recipe
from manifold_ssl.experiments.history import analyze_history, kept_checkpoints
from manifold_ssl.run import pretrain
from manifold_ssl.run.record import RunDir

KEEP = ["--train.keep_every=1", "--train.keep_limit=2", "--train.keep_best=knn"]
QUICK = ["--train.knn_every=1", "--train.log_every=5", "--eval.linear_max_iter=20"]


def _cfg(tmp_path, *extra):
    return apply_overrides(
        load_recipe("digits_mmcr"), tiny_run_args(tmp_path, *QUICK, *KEEP, *extra)
    )


def _monitor(run: RunDir) -> dict[int, float]:
    return {r["epoch"]: r["knn_val_accuracy"] for r in run.metrics() if "knn_val_accuracy" in r}


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """A 4-epoch run, stopped after 2 epochs and resumed (the best value crosses the resume)."""
    tmp = tmp_path_factory.mktemp("history")
    first = pretrain(_cfg(tmp, "--train.epochs=4", "--train.max_steps=10"), progress=False)
    assert first.status == "max_steps"
    cfg = RunDir(first.run_dir).config(without=("train.max_steps",))
    pretrain(cfg, resume=first.run_dir, progress=False)
    return RunDir(first.run_dir)


def test_epoch_checkpoints_are_kept_newest_first_within_the_limit(history):
    assert history.kept() == ["best.pt", "epoch-0003.pt", "epoch-0004.pt", "last.pt"]
    assert kept_checkpoints(history) == ["epoch-0003.pt", "epoch-0004.pt", "last.pt"]
    for name, epoch in (("epoch-0003", 3), ("epoch-0004", 4)):
        assert history.checkpoint(name)["epoch"] == epoch
    # a hard link of the checkpoint it kept, not a copy (where the file system links)
    epoch4, last = history.checkpoint_file("epoch-0004"), history.checkpoint_file("last")
    assert os.path.samefile(epoch4, last) or epoch4.read_bytes() == last.read_bytes()


def test_the_best_checkpoint_is_the_best_monitor_value_across_the_resume(history):
    monitor = _monitor(history)
    assert sorted(monitor) == [1, 2, 3, 4]
    best_epoch = max(monitor, key=lambda e: (monitor[e], -e))  # the first of equal values
    best = history.checkpoint("best")
    assert best["epoch"] == best_epoch and best["best"] == pytest.approx(monitor[best_epoch])
    assert history.checkpoint("last")["best"] == pytest.approx(max(monitor.values()))


def test_geometry_is_measured_at_every_kept_checkpoint(history, tmp_path):
    rows = analyze_history(history.path, "all", tmp_path / "h")
    assert [r["checkpoint"] for r in rows] == ["epoch-0003.pt", "epoch-0004.pt", "last.pt"]
    assert [r["epoch"] for r in rows] == [3, 4, 4]
    for key in ("percent_error", "effective_rank", "capacity", "knn_accuracy"):
        assert all(r[f"probe/{key}"] == r[f"probe/{key}"] for r in rows), key  # not NaN
    assert "probe/coherence/shuffled/within" in rows[0]  # with its control
    # the same weights give the same geometry: epoch 4 is last.pt
    assert rows[1]["probe/percent_error"] == rows[2]["probe/percent_error"]
    assert (tmp_path / "h" / "probes.png").is_file() and (
        tmp_path / "h" / "coherence.png"
    ).is_file()
    saved = json.loads((tmp_path / "h" / "history.json").read_text())
    assert [r["checkpoint"] for r in saved] == [r["checkpoint"] for r in rows]
    with pytest.raises(ValueError, match="epoch-0001.pt not in .*kept: epoch-0003.pt"):
        analyze_history(history.path, "epoch-0001", tmp_path / "h2")


def test_evaluate_analyze_and_export_take_a_kept_checkpoint(history, tmp_path, capsys):
    assert main(["evaluate", str(history.path), "--checkpoint", "best", "--quiet"]) == 0
    result = json.loads((history.path / "eval-best.json").read_text())
    assert result["checkpoint"] == "best" and "pretrained" in result["results"]
    assert main(["analyze", str(history.path), "--checkpoints", "epoch-0004,best"]) == 0
    assert "epoch-0004.pt" in capsys.readouterr().out
    out = tmp_path / "b.pt"
    args = ["export", str(history.path), "--format", "state_dict", "--out", str(out)]
    assert main([*args, "--checkpoint", "epoch-0003"]) == 0
    exported = json.loads(out.with_name("b.pt.json").read_text())
    assert exported["step"] == history.checkpoint("epoch-0003")["step"]
    assert main(["evaluate", str(history.path), "--checkpoint", "epoch-0001"]) == 2
    assert "no checkpoint epoch-0001.pt" in capsys.readouterr().err


def test_keep_best_needs_a_monitor():
    with pytest.raises(ValueError, match="train.knn_every"):
        apply_overrides(
            load_recipe("digits_mmcr"), ["--train.keep_best=knn", "--train.knn_every=0"]
        )
