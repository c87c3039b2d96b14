"""One pipeline for every launcher (issue 29.2): ``pretrain``, a sweep's trial and a Slurm job's
process train and evaluate by :func:`manifold_ssl.run.run`, with one evaluation rule and one
record beside the results."""

from __future__ import annotations

import json

import pytest
from helpers import tiny_run_args

from manifold_ssl.cli import main
from manifold_ssl.config import apply_overrides, config_to_dict, load_recipe
from manifold_ssl.experiments.sweep import run_trial
from manifold_ssl.run import run
from manifold_ssl.run.launch import RunJob

SMALL = ("--train.knn_every=0", "--eval.linear_max_iter=30", "--eval.baselines=false")


def test_the_cli_a_sweep_trial_and_a_slurm_job_write_the_same_eval_json(tmp_path):
    # a run stopped at the train.max_steps it was given is evaluated by all three (the CLI
    # evaluated only finished runs, the others also max_steps; the records differed)
    args = tiny_run_args(tmp_path, "--train.max_steps=3", *SMALL)
    assert main(["pretrain", "--quiet", *args]) == 0
    (cli_run,) = (tmp_path / "runs").iterdir()
    cfg = config_to_dict(apply_overrides(load_recipe("digits_mmcr"), args))
    trial = tmp_path / "sweep" / "trials" / "t0"
    assert run_trial(cfg, str(trial), True, 0) == "done"
    job = tmp_path / "job"
    assert RunJob(cfg, str(job), True)() == "max_steps"
    cli, swept, launched = (
        json.loads((p / "eval.json").read_text()) for p in (cli_run, trial, job)
    )
    assert cli == swept == launched
    assert cli["steps"] == 3 and cli["method"] == "mmcr" and cli["dataset"] == "digits"
    assert "%" in cli["final percent error"] and "pretrained" in cli["results"]


def test_auto_resume_continues_a_checkpoint_and_starts_over_without_one(tmp_path):
    base = apply_overrides(load_recipe("digits_mmcr"), tiny_run_args(tmp_path, *SMALL))
    path = tmp_path / "r"
    path.mkdir()
    (path / "stale.txt").write_text("an attempt that checkpointed nothing")
    first = run(
        apply_overrides(base, ["--train.max_steps=2"]),
        path,
        resume="auto",
        evaluate=False,
        progress=False,
    )
    assert first.result.step == 2 and first.results is None and not (path / "stale.txt").exists()
    (path / "mark.txt").write_text("a directory started over would lose this")
    again = run(
        apply_overrides(base, ["--train.max_steps=4"]),
        path,
        resume="auto",
        evaluate=False,
        progress=False,
    )
    assert again.result.step == 4 and (path / "mark.txt").exists()  # continued from step 2
    with pytest.raises(ValueError, match="resume must be one of no, yes, auto"):
        run(base, path, resume="maybe")
    with pytest.raises(ValueError, match="resume=auto needs the run directory"):
        run(base, resume="auto")


def test_a_run_records_what_it_derived_from_its_config(tmp_path):
    # issue 29.4: the peak learning rate, the view size, the widths and every loss
    # hyperparameter with its default were in no file of the run
    from manifold_ssl.config import effective_lr, loss_keywords

    cfg = apply_overrides(
        load_recipe("digits_mmcr"),
        tiny_run_args(
            tmp_path,
            "--train.max_steps=1",
            "--method.loss.lambd=0.25",
            "--optim.lr_scaling=linear",
            *SMALL,
        ),
    )
    done = run(cfg, evaluate=False, progress=False)
    resolved = json.loads((done.result.run_dir / "meta.json").read_text())["resolved"]
    assert resolved["peak_lr"] == effective_lr(cfg) == cfg.optim.lr / 4  # batch 64 of ref 256
    assert resolved["embedding_dim"] == 16  # --model.projector=32-16
    assert resolved["feature_dim"] == done.result.method.backbone.out_dim
    assert resolved["view_size"] == done.result.splits.image_size
    assert resolved["loss"] == {**loss_keywords("mmcr"), "lambd": 0.25}
    assert set(loss_keywords("mmcr")) > {"lambd"}  # the defaults are there too
