"""A run's checkpoint history (train.keep_*): epoch checkpoints with a retention limit, the best
monitor value's checkpoint across a resume, geometry measured over the history, and evaluate
and export of any kept checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

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
    kept = ["epoch-0003.pt", "epoch-0004.pt", "best.pt", "last.pt"]
    assert kept_checkpoints(history) == kept
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
    # issue 27.11: every kept file once (best.pt included; last.pt, a hard link of epoch 4,
    # not measured twice), each row named with all its names and its own step
    names = [n for r in rows for n in [r["checkpoint"], *r["same_as"]]]
    assert sorted(names) == history.kept()
    steps = {n: history.checkpoint(n)["step"] for n in history.kept()}
    assert all(steps[n] == r["step"] for r in rows for n in [r["checkpoint"], *r["same_as"]])
    assert len({r["step"] for r in rows}) == len(rows)
    last = next(r for r in rows if "last.pt" in [r["checkpoint"], *r["same_as"]])
    assert "epoch-0004.pt" in [last["checkpoint"], *last["same_as"]]
    assert [r["epoch"] for r in rows] == sorted({history.checkpoint(n)["epoch"] for n in names})
    for key in ("percent_error", "effective_rank", "capacity", "knn_accuracy"):
        assert all(r[f"probe/{key}"] == r[f"probe/{key}"] for r in rows), key  # not NaN
    assert "probe/coherence/shuffled/within" in rows[0]  # with its control
    assert all(r["probe/coherence/last/within"] != 0 for r in rows)  # issue 27.1
    assert (tmp_path / "h" / "probes.png").is_file() and (
        tmp_path / "h" / "coherence.png"
    ).is_file()
    saved = json.loads((tmp_path / "h" / "history.json").read_text())
    assert [r["checkpoint"] for r in saved] == [r["checkpoint"] for r in rows]
    with pytest.raises(ValueError, match="epoch-0001.pt not in .*kept: epoch-0003.pt"):
        analyze_history(history.path, "epoch-0001", tmp_path / "h2")


def test_evaluate_analyze_and_export_take_a_kept_checkpoint(history, tmp_path, capsys):
    best = history.checkpoint("best")
    assert best["step"] != history.checkpoint("last")["step"]  # best.pt is not last.pt here
    capsys.readouterr()
    assert main(["evaluate", str(history.path), "--checkpoint", "best", "--quiet"]) == 0
    console = capsys.readouterr().out
    result = json.loads((history.path / "eval-best.json").read_text())
    assert result["checkpoint"] == "best.pt" and "pretrained" in result["results"]
    # issue 27.10: every number and label is best.pt's: its step, the percent error logged
    # at (or last before) its step, its file
    logged = [r for r in history.metrics() if "percent_error" in r and r["step"] <= best["step"]]
    at = logged[-1]["step"]
    before = f", the last logged before this checkpoint's step {best['step']}"
    before = "" if at == best["step"] else before
    own = f"{100 * logged[-1]['percent_error']:.2f}% (batch centroids, step {at}{before})"
    assert result["steps"] == best["step"] and result["final percent error"] == own
    assert own in (history.path / "report-best.md").read_text()
    assert f"checkpoint: {history.checkpoint_file('best')}" in console
    assert "last.pt" not in console
    assert main(["analyze", str(history.path), "--checkpoints", "epoch-0004,best"]) == 0
    assert "epoch-0004.pt" in capsys.readouterr().out
    out = tmp_path / "b.pt"
    args = ["export", str(history.path), "--format", "state_dict", "--out", str(out)]
    assert main([*args, "--checkpoint", "epoch-0003"]) == 0
    exported = json.loads(out.with_name("b.pt.json").read_text())
    assert exported["step"] == history.checkpoint("epoch-0003")["step"]
    capsys.readouterr()
    # helper 16: epoch-3 is epoch-0003.pt, in every command and in every file named after it
    assert main([*args, "--checkpoint", "epoch-3", "--overwrite"]) == 0
    assert json.loads(out.with_name("b.pt.json").read_text())["step"] == exported["step"]
    assert main(["evaluate", str(history.path), "--checkpoint", "epoch-3", "--quiet"]) == 0
    assert json.loads((history.path / "eval-epoch-0003.json").read_text())["checkpoint"] == (
        "epoch-0003.pt"
    )
    assert not (history.path / "eval-epoch-3.json").exists()
    assert main([*args, "--checkpoint", "epoch-9", "--overwrite"]) == 2  # issue 27.17e
    err = capsys.readouterr().err
    assert "no checkpoint epoch-0009.pt" in err and ", ".join(history.kept()) in err
    assert main(["evaluate", str(history.path), "--checkpoint", "epoch-0001"]) == 2
    assert "no checkpoint epoch-0001.pt" in capsys.readouterr().err


def test_export_out_a_folder_that_does_not_exist_is_made(history, tmp_path):
    # helper 16: --out new/ wrote a file named new (and new.json), not a folder
    for target in (f"{tmp_path / 'new'}/", str(tmp_path / "bare")):
        args = ["export", str(history.path), "--format", "state_dict", "--out", target]
        assert main([*args, "--checkpoint", "best"]) == 0
        folder = Path(target.rstrip("/"))
        assert folder.is_dir(), target
        written = folder / f"{history.path.name}-best-state_dict.pt"
        assert written.is_file() and written.with_name(written.name + ".json").is_file()
        assert main(args) == 0  # last: the run's name alone
        assert (folder / f"{history.path.name}-state_dict.pt").is_file()
    (tmp_path / "file").write_text("")
    args = ["export", str(history.path), "--format", "state_dict", "--out", f"{tmp_path}/file/"]
    assert main(args) == 2


def test_keep_best_needs_a_monitor():
    with pytest.raises(ValueError, match="train.knn_every"):
        apply_overrides(
            load_recipe("digits_mmcr"), ["--train.keep_best=knn", "--train.knn_every=0"]
        )


@pytest.mark.parametrize("recipe", ["digits_clip", "digits_multimodal_mmcr"])
def test_history_of_an_image_caption_run_is_refused_with_what_applies(recipe, tmp_path, capsys):
    # issue 27.6: a traceback ending in "TypeError: the training probes measure image views"
    import yaml

    from manifold_ssl.config import config_to_dict

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config_to_dict(load_recipe(recipe))))
    (run / "checkpoints" / "last.pt").write_bytes(b"")  # never read: refused before loading
    assert main(["analyze", str(run), "--checkpoints", "all"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "image-caption method" in err
    assert f"manifold-ssl analyze {run}/checkpoints/NAME.pt" in err and "evaluate" in err
