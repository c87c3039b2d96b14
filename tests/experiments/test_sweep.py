"""Sweeps: expansion, resumable execution after a kill, the summary, Slurm job construction."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import TINY_MODEL

from manifold_ssl.experiments.sweep import (
    _attempt,
    _Requeueable,
    expand,
    load_spec,
    run_sweep,
    run_trial,
    slurm_executor,
    summarise,
    sweep_status,
)
from manifold_ssl.runinfo import read_metrics


def _spec(tmp_path: Path, steps: int = 6, grid: dict | None = None, evaluate=False) -> Path:
    overrides = {o[2:].split("=")[0]: yaml.safe_load(o.split("=", 1)[1]) for o in TINY_MODEL}
    overrides.update(
        {
            "data.root": str(tmp_path / "data"),
            "train.max_steps": steps,
            "train.epochs": 1000,
            "train.log_every": 1,
            "train.knn_every": 0,
            "train.checkpoint_every_steps": 2,
        }
    )
    spec = {
        "recipe": "digits_mmcr",
        "overrides": overrides,
        "grid": grid or {"P": [16, 32], "D": [8, 16]},
    }
    spec["evaluate"] = evaluate
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_expand_resolves_aliases_and_names_trials_by_their_config(tmp_path):
    spec = load_spec(str(_spec(tmp_path)), ["K=2,4", "seed=0,1"])
    trials = expand(spec)
    assert len(trials) == 2 * 2 * 2 * 2
    t = trials[-1]
    assert t.point == {"P": 32, "D": 16, "K": 4, "seed": 1}
    assert (t.cfg.train.batch_size, t.cfg.views.num_views, t.cfg.train.seed) == (32, 4, 1)
    assert t.cfg.model.projector == "32-16"  # the hidden width kept, the last replaced
    assert len({x.key for x in trials}) == len(trials)
    # the key ignores where a trial runs, not what it computes
    again = load_spec(str(_spec(tmp_path)), ["K=2,4", "seed=0,1"])
    again.overrides["train.out_dir"] = "elsewhere"
    assert [x.key for x in expand(again)] == [x.key for x in trials]
    with pytest.raises(ValueError, match="KEY=V1"):
        load_spec(str(_spec(tmp_path)), ["P"])
    with pytest.raises(ValueError, match="not found"):
        load_spec("no_such_sweep")
    assert len(expand(load_spec("digits_double_descent"))) == 72
    stl = expand(load_spec("stl10_double_descent"))  # the paper's grid, on STL-10 + unlabeled
    assert len(stl) == 75 and all(t.cfg.data.unlabeled and t.cfg.data.name == "stl10" for t in stl)


def test_a_trial_another_process_runs_is_not_deleted(tmp_path):
    """A second launch of a sweep meets a trial whose first process has not checkpointed yet:
    it must refuse, not delete the directory under the running trial."""
    from manifold_ssl.config import config_to_dict
    from manifold_ssl.runinfo import run_lock

    trial = expand(load_spec(str(_spec(tmp_path))))[0]
    path = tmp_path / "trials" / trial.key
    path.mkdir(parents=True)
    (path / "config.yaml").write_text("written by the running trial\n")
    with run_lock(path), pytest.raises(ValueError, match="in use by process"):
        run_trial(config_to_dict(trial.cfg), str(path), False, 0)
    # a second launch of the sweep skips it as busy: not a failure with an .error file
    with run_lock(path):
        assert _attempt(config_to_dict(trial.cfg), str(path), False, 0) == "busy"
    assert not path.with_suffix(".error").exists()
    assert (path / "config.yaml").read_text() == "written by the running trial\n"


def test_a_killed_sweep_reruns_only_its_missing_trials(tmp_path):
    spec = _spec(tmp_path, steps=40)
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "manifold_ssl.cli", "sweep", str(spec), "--out", str(out)]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not list(out.glob("trials/*/done.json")):
        time.sleep(0.2)
    time.sleep(1.0)  # into the next trial
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {
        p.parent.name: p.parent.joinpath("metrics.jsonl").read_bytes()
        for p in out.glob("trials/*/done.json")
    }
    counts = sweep_status(out)
    assert 1 <= counts["done"] < 4, counts
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{len(done_before)} done, {4 - len(done_before)} to run" in rerun.stdout
    assert sweep_status(out) == {"done": 4, "partial": 0, "failed": 0, "pending": 0}
    for name, metrics in done_before.items():  # finished trials were not touched
        assert (out / "trials" / name / "metrics.jsonl").read_bytes() == metrics
    rows = json.loads((out / "summary.json").read_text())
    assert len(rows) == 4
    for row in rows:
        records = [
            r for r in read_metrics(out / "trials" / row["trial"] / "metrics.jsonl") if "loss" in r
        ]
        assert [r["step"] for r in records] == list(range(1, 41))  # resumed without repeats
        assert row["steps"] == 40 and row["flops"] == records[-1]["flops"] > 0
        assert row["percent_error"] == pytest.approx(
            np.mean([r["percent_error"] for r in records[-4:]])
        )
        assert {row["P"], row["D"], row["K"]} <= {16, 32, 8, 2}


def test_summary_and_rerun_in_process(tmp_path):
    out = tmp_path / "sweep"
    spec = load_spec(str(_spec(tmp_path, steps=3, grid={"P": [16], "D": [8]}, evaluate=True)))
    rows = run_sweep(spec, out, progress=False)
    assert [r["status"] for r in rows] == ["done"]
    assert 0.1 < rows[0]["knn_test_accuracy"] <= 1 and 0.1 < rows[0]["linear_test_accuracy"] <= 1
    mtime = (out / "trials" / rows[0]["trial"] / "done.json").stat().st_mtime_ns
    assert run_sweep(spec, out, progress=False) == rows
    assert (out / "trials" / rows[0]["trial"] / "done.json").stat().st_mtime_ns == mtime
    header = (out / "summary.csv").read_text().splitlines()[0].split(",")
    assert {"trial", "status", "P", "D", "K", "seed", "steps", "flops", "percent_error"} <= set(
        header
    )
    assert summarise(out) == rows


def test_slurm_job_construction(tmp_path, monkeypatch):
    import submitit
    from submitit.slurm.slurm import SlurmExecutor

    import manifold_ssl.experiments.sweep as sweep_module

    # issue 18.10: without Slurm, AutoExecutor ran every trial here at once as "submitted"
    with pytest.raises(ValueError, match="sbatch is not on PATH"):
        slurm_executor(tmp_path, {"partition": "gpu"})
    monkeypatch.setattr(sweep_module.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    ex = slurm_executor(tmp_path, {"partition": "gpu", "time": 30, "gpus": 2, "cpus": 6})
    script = ex._executor._make_submission_file_text("python -m job", "uid")
    for line in (
        "--partition=gpu",
        "--time=30",
        "--gpus-per-node=2",
        "--cpus-per-task=6",
        "--signal=USR2@",
    ):
        assert line in script, line
    # the trial itself, through submitit's in-process executor, and its requeue on preemption
    out = tmp_path / "sweep"
    trial = expand(load_spec(str(_spec(tmp_path, steps=2, grid={"P": [16], "D": [8]}))))[0]
    from manifold_ssl.config import config_to_dict

    task = _Requeueable(config_to_dict(trial.cfg), str(out / trial.key), False)
    debug = slurm_executor(tmp_path, {"cluster": "debug"})
    assert debug.submit(task).result() == "done"
    again = task.checkpoint()
    assert isinstance(again, submitit.helpers.DelayedSubmission)
    assert again.function.args == task.args


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    out = tmp_path / "sweep"
    # 4096 exceeds the digits training split: that trial fails when it starts, the other runs
    spec = load_spec(str(_spec(tmp_path, steps=2, grid={"P": [4096, 16], "D": [8]})))
    rows = {r["P"]: r for r in run_sweep(spec, out, progress=False)}
    assert rows[16]["status"] == "done"
    assert rows[4096]["status"] == "failed"
    assert "train.batch_size 4096 exceeds" in rows[4096]["error"]
    assert sweep_status(out) == {"done": 1, "partial": 0, "failed": 1, "pending": 0}
    # running it again retries only the failed trial (and records it again)
    again = {r["P"]: r for r in run_sweep(spec, out, progress=False)}
    assert again[4096]["status"] == "failed" and again[16] == rows[16]


def test_a_changed_spec_run_into_the_same_directory_summarises_only_its_own_trials(tmp_path):
    # issue 18.2/18.3: the old trials mixed into summary.csv and the figures; steps and FLOPs
    # came from the last *logged* step (log_every 2 and 3 steps: step 2, not 3)
    out = tmp_path / "sweep"
    first = load_spec(str(_spec(tmp_path, steps=2, grid={"P": [16], "D": [8]})))
    assert [r["steps"] for r in run_sweep(first, out, progress=False)] == [2]
    second = load_spec(str(_spec(tmp_path, steps=3, grid={"P": [16], "D": [8]})))
    second.overrides["train.log_every"] = 2
    (row,) = run_sweep(second, out, progress=False)
    records = read_metrics(out / "trials" / row["trial"] / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert row["steps"] == 3 and row["flops"] == 3 * records[0]["flops"]
    assert len((out / "summary.csv").read_text().splitlines()) == 2
    assert sweep_status(out) == {"done": 1, "partial": 0, "failed": 0, "pending": 0}
    assert len(list((out / "trials").glob("*.json"))) == 2  # the earlier trial is kept


def _children(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return set()
    return {int(c) for c in text.split()}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _trial_processes(pid: int) -> set[int]:
    return {
        c
        for c in _children(pid)
        if b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()
    }


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")
@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL", "SIGTERM"])
def test_a_pool_stopped_by_a_signal_leaves_no_process_and_resumes(tmp_path, how):
    # issue 18.9: Ctrl-C printed tracebacks and hung; a killed parent left its workers running.
    # SIGTERM: two trials on two workers, none pending when it comes, both far from done
    grid = {"P": [16, 32], "D": [8]} if how == "SIGTERM" else None
    spec = _spec(tmp_path, steps=400 if grid is None else 5000, grid=grid)
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "manifold_ssl.cli", "sweep", str(spec), "--out", str(out)]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen(
        [*cmd, "--workers", "2", "--quiet"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and len(list(out.glob("trials/*/checkpoints/last.pt"))) < 2:
        time.sleep(0.2)
    workers = _trial_processes(proc.pid)
    assert len(workers) == 2, workers
    proc.send_signal(getattr(signal, how))
    _, stderr = proc.communicate(timeout=120)
    deadline = time.time() + 60
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.2)
    assert not any(_alive(w) for w in workers)  # no orphan
    if how != "SIGKILL":
        assert proc.returncode == 130, stderr
        assert "Traceback" not in stderr and "the same command resumes it" in stderr
    counts = sweep_status(out)
    assert counts["failed"] == 0 and counts["done"] < 4, counts
    if how == "SIGTERM":  # the running trials were stopped, not left to finish
        assert counts == {"done": 0, "partial": 2, "failed": 0, "pending": 0}, counts
    assert not list(out.glob("trials/*.error"))


def test_a_trial_stopped_by_its_time_budget_is_done(tmp_path):
    # a speedrun's trials end on train.time_budget_s: finished, not partial (else each rerun
    # would train another budget)
    out = tmp_path / "sweep"
    spec = load_spec(str(_spec(tmp_path, steps=50, grid={"P": [16], "D": [8]})))
    spec.overrides["train.time_budget_s"] = 1e-6
    (row,) = run_sweep(spec, out, progress=False)
    assert row["status"] == "done" and row["steps"] == 1


def test_a_sweep_whose_trials_all_fail_alike_stops_after_two(tmp_path):
    # issue 27.15: with no data, 18 trials failed one by one on the same error. Here every
    # trial's batch exceeds the data: the first two (which differ in every grid value) fail
    # at start with one error, and no other trial is started
    out = tmp_path / "sweep"
    spec = load_spec(str(_spec(tmp_path, steps=2, grid={"D": [8, 16]})), ["seed=0,1"])
    spec.overrides["train.batch_size"] = 4096
    match = "differ in every grid value.*train.batch_size 4096.*2 trial.s. run, 2 not started"
    with pytest.raises(ValueError, match=match):
        run_sweep(spec, out, progress=False)
    assert sweep_status(out) == {"done": 0, "partial": 0, "failed": 2, "pending": 2}
    failed = {p.stem for p in (out / "trials").glob("*.error")}
    points = [json.loads((out / "trials" / f"{k}.json").read_text())["point"] for k in failed]
    assert {(p["D"], p["seed"]) for p in points} == {(8, 0), (16, 1)}


def test_a_failure_that_depends_on_a_grid_value_does_not_stop_the_sweep(tmp_path):
    # the first trial's partner differs from it in P as well, so it runs; every trial runs
    out = tmp_path / "sweep"
    spec = load_spec(str(_spec(tmp_path, steps=2, grid={"P": [4096, 16], "D": [8, 16]})))
    rows = run_sweep(spec, out, progress=False)
    assert sorted((r["P"], r["D"], r["status"]) for r in rows) == [
        (16, 8, "done"),
        (16, 16, "done"),
        (4096, 8, "failed"),
        (4096, 16, "failed"),
    ]


def test_sweep_list_prints_every_trial_without_running_any(tmp_path, capsys):
    from manifold_ssl.cli import main

    out = tmp_path / "sweep"
    spec = str(_spec(tmp_path))
    assert main(["sweep", spec, "--out", str(out), "--grid", "seed=0,1", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"8 trials of {spec} in {out / 'trials'}")
    keys = [t.key for t in expand(load_spec(spec, ["seed=0,1"]))]
    assert [ln.split()[:2] for ln in lines[1:]] == [[k, "pending"] for k in keys]
    assert lines[-1].split()[2:] == ["D=16", "P=32", "seed=1"]  # the spec's axes, then seed
    assert not out.exists()


def test_the_sweep_bar_counts_done_failed_and_interrupted_trials_apart(monkeypatch):
    # issue 27.17: the bar counted every trial that ended, interrupted ones too, as done
    import manifold_ssl.experiments.sweep as sweep_module

    bars = []

    def bar(**kwargs):
        import io

        from tqdm import tqdm

        bars.append(tqdm(**kwargs, file=io.StringIO()))
        return bars[-1]

    statuses = iter(["done", "failed", "done", "partial", "done"])
    monkeypatch.setattr(sweep_module, "tqdm", bar)
    monkeypatch.setattr(sweep_module, "_attempt", lambda *args: next(statuses))
    todo = [({}, str(Path("/nonexistent") / str(i)), False) for i in range(5)]
    # an interrupted trial (Ctrl-C in this process) stops the sweep: the last is not started
    with pytest.raises(KeyboardInterrupt):
        sweep_module._run_local(todo, 1, progress=True)
    (b,) = bars
    assert b.n == 2 and b.total == 5
    assert b.postfix == "failed=1, interrupted=1"
    assert next(statuses) == "done"


def test_grid_values_are_read_as_the_keys_are(tmp_path):
    # issue 27.9: --grid train.wandb=off,offline read off as YAML 1.1's False
    spec = load_spec(str(_spec(tmp_path)), ["train.wandb=off,offline", "optim.lr=1e-4"])
    assert spec.grid["train.wandb"] == ["off", "offline"] and spec.grid["optim.lr"] == [1e-4]
    assert {t.cfg.train.wandb for t in expand(spec)} == {"off", "offline"}
