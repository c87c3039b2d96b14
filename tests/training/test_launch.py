"""One run on a Slurm cluster (issue 21, item 5): the sbatch script submitit writes, the job's
processes joining one group by env:// as under torchrun (submitit's local executor: 2
processes on this machine), and the requeued job resuming the run exactly."""

from __future__ import annotations

import pytest
from helpers import one_and_two_process_losses, tiny_run_args

from manifold_ssl.cli import main
from manifold_ssl.config import apply_overrides, config_to_dict, load_recipe
from manifold_ssl.run.launch import LaunchConfig, RunJob, launch_slurm, slurm_executor
from manifold_ssl.training.metrics import read_metrics


def _losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}


def _cfg(tmp_path, *extra):
    return apply_overrides(
        load_recipe("digits_mmcr"),
        tiny_run_args(tmp_path, "--train.epochs=1", "--train.log_every=1", *extra),
    )


def test_the_sbatch_script_asks_for_the_nodes_gpus_and_requeue_signal(tmp_path, monkeypatch):
    from submitit.slurm.slurm import SlurmExecutor

    import manifold_ssl.run.launch as launch

    with pytest.raises(ValueError, match="sbatch is not on PATH"):
        slurm_executor(tmp_path, LaunchConfig(), "x")
    monkeypatch.setattr(launch.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    settings = LaunchConfig(nodes=4, gpus_per_node=8, cpus_per_task=10, time=240)
    settings.partition, settings.account = "gpu", "ssl"
    ex = slurm_executor(tmp_path, settings, "manifold-ssl-run")
    script = ex._executor._make_submission_file_text("python -m job", "uid")
    for line in (
        "--nodes=4",
        "--ntasks-per-node=8",
        "--gpus-per-node=8",
        "--cpus-per-task=10",
        "--time=240",
        "--partition=gpu",
        "--account=ssl",
        "--signal=USR2@120",
        "--job-name=manifold-ssl-run",
    ):
        assert line in script, line


def test_the_jobs_processes_train_one_run_as_under_torchrun(tmp_path):
    """Two processes of submitit's local executor: the loss curve of the one-process run (the
    memory loader's DDP equivalence), through the env:// rendezvous of the launch."""
    cfg = _cfg(tmp_path, "--train.max_steps=4", "--model.sync_bn=true")
    single, spawned = one_and_two_process_losses(cfg, tmp_path / "reference")
    settings = LaunchConfig(tasks_per_node=2, gpus_per_node=0, cluster="local", evaluate=False)
    job = launch_slurm(cfg, tmp_path / "runs" / "launched", settings)
    assert job.results() == ["max_steps", "max_steps"]
    launched = _losses(tmp_path / "runs" / "launched")
    assert sorted(launched) == sorted(single) == [1, 2, 3, 4]
    for step in single:
        assert launched[step] == pytest.approx(single[step], rel=1e-4), step
        assert launched[step] == pytest.approx(spawned[step], rel=1e-6), step


def test_a_requeued_job_resumes_the_run_exactly(tmp_path):
    import submitit

    run = tmp_path / "runs" / "requeued"
    full = RunJob(config_to_dict(_cfg(tmp_path)), str(tmp_path / "runs" / "full"), False)
    assert full() == "finished"
    # the first attempt stops after 3 steps (as a preemption would, after its checkpoint)
    first = RunJob(config_to_dict(_cfg(tmp_path, "--train.max_steps=3")), str(run), False)
    assert first() == "max_steps"
    job = RunJob(config_to_dict(_cfg(tmp_path)), str(run), True)
    again = job.checkpoint()  # what submitit submits on preemption: the same job
    assert isinstance(again, submitit.helpers.DelayedSubmission) and again.function.args == job.args
    assert again.function() == "finished"
    a, b = _losses(tmp_path / "runs" / "full"), _losses(run)
    assert sorted(a) == sorted(b)
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-6), step
    assert (run / "eval.json").exists()  # rank 0 evaluated the finished run


def test_launch_from_the_command_line(tmp_path, capsys):
    args = ["launch", "slurm", "digits_mmcr", *tiny_run_args(tmp_path, "--train.max_steps=2")]
    assert main([*args, "--launch.cluster=debug", "--evaluate=false", "--wait"]) == 0
    out = capsys.readouterr().out
    assert "submitted" in out and "max_steps" in out
    (run,) = [p for p in (tmp_path / "runs").iterdir() if not p.name.endswith(".slurm")]
    assert len(_losses(run)) == 2
    with pytest.raises(SystemExit):
        main(["launch", "slurm", "digits_mmcr", "--nodes", "0"])
    assert "argument --nodes: expected a positive integer, got '0'" in capsys.readouterr().err
