"""Weights & Biases tracking in offline mode (no network): the metrics lines, the config, the
evaluation as the summary; a resumed run continues the same W&B run."""

from __future__ import annotations

import json

import pytest
from helpers import tiny_run_args

from manifold_ssl.cli import main
from manifold_ssl.config import apply_overrides, load_recipe

pytest.importorskip("wandb")


def _logged(offline_run) -> bytes:
    """The run's transaction log (``run-<id>.wandb``): protobuf records, whose keys and
    JSON-encoded values are stored as plain bytes."""
    (log,) = offline_run.glob("run-*.wandb")
    return log.read_bytes()


def test_a_run_is_tracked_offline_with_its_config_metrics_and_evaluation(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    args = tiny_run_args(
        tmp_path, "--train.epochs=1", "--train.knn_every=1", "--eval.baselines=false"
    )
    args += ["--eval.linear_max_iter=20", "--train.wandb=offline", "--train.wandb_group=g1"]
    assert main(["pretrain", *args, "--quiet"]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    # the training, then the evaluation: two local offline runs of one W&B run (one id), which
    # wandb sync joins
    training, evaluation = sorted((run_dir / "wandb").glob("offline-run-*"))
    run_id = run_dir.name.replace(".", "-")[:64]
    assert training.name.endswith(run_id) and evaluation.name.endswith(run_id)
    logged = _logged(training)
    for key in (b"loss", b"lr", b"images_per_s", b"knn_val_accuracy", b"train_seconds"):
        assert key in logged, key  # the metrics lines and the monitor
    for key in (b"wandb_group", b"digits", b"knn_every"):
        assert key in logged, key  # the resolved config
    result = _logged(evaluation)
    assert b"eval/pretrained/linear_test_accuracy" in result
    assert b"figures/curves" in result  # the run's figure
    value = json.loads((run_dir / "eval.json").read_text())["results"]["pretrained"]
    assert json.dumps(value["linear_test_accuracy"]).encode() in result


def test_tracking_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    from manifold_ssl.training.tracking import Tracking, WandbRun

    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ValueError, match=r"manifold-ssl\[wandb\]"):
        WandbRun(tmp_path, Tracking("offline"))


def test_tracking_keys_may_change_on_resume():
    cfg = apply_overrides(load_recipe("digits_mmcr"), ["--train.wandb=offline"])
    from manifold_ssl.config import RESUME_FREE_KEYS, differing_keys

    assert differing_keys(cfg, load_recipe("digits_mmcr"), RESUME_FREE_KEYS) == []
