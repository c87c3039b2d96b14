"""A training step as a GPU sees it, counted on the CPU (``manifold_ssl.dispatch``): no host
read outside logging steps for any method, loader or view count, one process or two; the K
views of a batch in a number of device operations that does not grow with K; and a non-finite
loss still ends the run with its last good checkpoint."""

from __future__ import annotations

import math

import pytest
import torch
import torch.multiprocessing as mp

from manifold_ssl.config import apply_overrides, load_recipe
from manifold_ssl.data.synthetic import write_image_folder
from manifold_ssl.dispatch import DispatchCounter, per_step_counts
from manifold_ssl.methods import METHODS, MULTIMODAL
from manifold_ssl.run import train as run_train
from manifold_ssl.runinfo import read_metrics
from manifold_ssl.training import loop

QUIET = [
    "--model.width=4",
    "--model.projector=32-16",
    "--train.batch_size=32",
    "--train.log_every=100000",
    "--train.knn_every=0",
    "--train.checkpoint_every=100000",
    "--train.epochs=1000",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return write_image_folder(root / "set", 2, {"train": 24, "test": 4}, (20, 20))


def _runner(tmp_path, recipe: str, *overrides: str):
    def run(steps: int) -> None:
        cfg = apply_overrides(
            load_recipe(recipe),
            [
                *QUIET,
                f"--data.root={tmp_path / 'data'}",
                f"--train.out_dir={tmp_path / 'runs'}",
                f"--train.max_steps={steps}",
                *overrides,
            ],
        )
        run_train(cfg, progress=False)

    return run


def _cases():
    for name, spec in sorted(METHODS.items()):
        for k in (2, 8) if spec.layout == "views" else (2,):
            yield pytest.param(name, k, "memory", id=f"{name}-K{k}-memory")
        yield pytest.param(name, 2, "stream", id=f"{name}-K2-stream")
    for name in sorted(MULTIMODAL):
        yield pytest.param(name, 1, "memory", id=f"{name}-memory")


@pytest.mark.parametrize(("name", "k", "loader"), list(_cases()))
def test_no_host_read_outside_logging_steps(tmp_path, folder, name, k, loader):
    overrides = [f"--method.name={name}", f"--views.num_views={k}", "--method.loss={}"]
    recipe = "digits_mmcr"
    if name in MULTIMODAL:
        recipe = "digits_clip" if name == "clip" else "digits_multimodal_mmcr"
        overrides = ["--model.projector=16", "--text.width=16", "--text.layers=1"]
    if loader == "stream":
        overrides += [
            "--data.name=imagefolder",
            f"--data.path={folder}",
            "--data.loader=stream",
            "--data.image_size=16",
            "--data.workers=0",
            "--data.views_on=device",
            "--views.preset=cifar",
            "--train.batch_size=8",
        ]
    spec = METHODS.get(name)
    if spec is not None and spec.predictor:
        overrides.append("--model.predictor=16-16")
    if (spec is not None and spec.target == "ema") or (name == "mmcr" and k == 8):
        overrides.append("--method.momentum=0.9")  # MMCR: with momentum views (Yerxa App. B)
    counts = per_step_counts(_runner(tmp_path, recipe, *overrides))
    assert counts["host_reads"] == 0, counts["reads"]


def test_the_polar_nuclear_norm_reads_nothing_back_even_on_the_cpu(tmp_path):
    # the Gram path's CPU-only read (how many level-2 columns) and its eigh are both gone
    overrides = ["--views.num_views=8", "--method.loss.nuclear=polar"]
    counts = per_step_counts(_runner(tmp_path, "digits_mmcr", *overrides))
    assert counts["host_reads"] == 0 and counts["cpu_only_reads"] == 0, counts


def test_views_cost_the_same_launches_for_any_k(tmp_path):
    views = {}
    for k in (2, 8, 40):
        counter = DispatchCounter()
        original = loop._Trainer.train_step

        def train_step(self, counter=counter, original=original):
            inner = self.data.next_views

            def next_views():
                with counter:
                    return inner()

            self.data.next_views = next_views
            try:
                return original(self)
            finally:
                del self.data.next_views

        loop._Trainer.train_step = train_step
        try:
            _runner(tmp_path, "digits_mmcr", f"--views.num_views={k}")(4)
        finally:
            loop._Trainer.train_step = original
        views[k] = counter.ops / 4
    # issue 19: 2,828 device ops for the views of a K = 8 step, linear in K
    assert views[8] <= 300 and views[40] <= 1.5 * views[2], views


def _ddp_counts(rank: int, world: int, out: str) -> None:
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=world
    )
    from pathlib import Path

    root = Path(out) / f"rank{rank}"
    counts = per_step_counts(_runner(root, "digits_mmcr", "--train.batch_size=32"), 3, 5)
    torch.save(counts["host_reads"], Path(out) / f"reads{rank}.pt")
    torch.distributed.destroy_process_group()


def test_no_host_read_outside_logging_steps_under_ddp(tmp_path):
    mp.spawn(_ddp_counts, args=(2, str(tmp_path)), nprocs=2)
    assert [torch.load(tmp_path / f"reads{r}.pt") for r in range(2)] == [0, 0]


def test_a_non_finite_loss_ends_the_run_with_its_last_good_checkpoint(
    tmp_path, monkeypatch, capsys
):
    from manifold_ssl.methods.method import SSLMethod

    forward = SSLMethod.forward
    calls = [0]

    def poisoned(self, views, labels=None):
        loss, terms, z = forward(self, views, labels)
        calls[0] += 1
        return (loss * math.nan if calls[0] == 6 else loss), terms, z

    monkeypatch.setattr(SSLMethod, "forward", poisoned)
    cfg = apply_overrides(
        load_recipe("digits_mmcr"),
        [
            *QUIET,
            f"--data.root={tmp_path / 'data'}",
            f"--train.out_dir={tmp_path / 'runs'}",
            "--train.log_every=4",
            "--train.checkpoint_every_steps=4",
            "--train.max_steps=20",
        ],
    )
    with pytest.raises(FloatingPointError, match="between 5 and [678];"):
        run_train(cfg, progress=False)
    (run,) = (tmp_path / "runs").iterdir()
    # the command line says it in one line, no traceback, and exits 1
    from manifold_ssl.cli import main

    calls[0] = 0
    args = [f"--{o.removeprefix('--')}" for o in QUIET]
    argv = [
        "pretrain",
        "--quiet",
        "--no-eval",
        *args,
        "--train.log_every=4",
        "--train.max_steps=20",
    ]
    argv += [f"--data.root={tmp_path / 'data'}", f"--train.out_dir={tmp_path / 'cli'}"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "loss was not finite" in err and "Traceback" not in err
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 4  # the checkpoint before the non-finite step, not after it
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_the_online_linear_head_learns_during_pretraining(tmp_path):
    # issue 19: the peers' tables report an online probe; ours trains beside the objective
    from manifold_ssl.run import evaluate_run, pretrain
    from manifold_ssl.runinfo import read_metrics

    cfg = apply_overrides(
        load_recipe("digits_mmcr"),
        [
            *QUIET[:2],
            "--views.num_views=2",
            "--train.batch_size=64",
            "--train.epochs=3",
            "--train.log_every=5",
            "--train.knn_every=3",
            "--eval.baselines=false",
            f"--data.root={tmp_path / 'data'}",
            f"--train.out_dir={tmp_path / 'runs'}",
        ],
    )
    result = pretrain(cfg, progress=False)
    records = read_metrics(result.run_dir / "metrics.jsonl")
    ce = [r["loss/online_ce"] for r in records if "loss/online_ce" in r]
    assert ce[-1] < ce[0] - 0.2  # measured: 2.39 -> 2.06
    monitored = [
        r["online_linear_val_accuracy"] for r in records if "online_linear_val_accuracy" in r
    ]
    assert monitored and monitored[-1] > 0.25  # chance 0.1; measured 0.41
    results = evaluate_run(cfg, result.method, result.splits, result.run_dir, "cpu", {}, False)
    assert results["online_linear"]["linear_val_accuracy"] == pytest.approx(monitored[-1])
    assert results["online_linear"]["linear_test_accuracy"] > 0.25
    state = torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert "online_head.weight" in state["model"] and "online_optimizer" in state
    # time to accuracy: the run's figure draws the monitor against the training clock
    from manifold_ssl.experiments.plots import plot_run

    (figure,) = plot_run(result.run_dir)
    assert figure.name == "accuracy_vs_compute.png" and figure.stat().st_size > 0


def _ddp_non_finite(rank: int, world: int, out: str) -> None:
    import os
    from pathlib import Path

    from manifold_ssl.methods.method import SSLMethod

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=world
    )
    forward, calls = SSLMethod.forward, [0]

    def poisoned(self, views, labels=None):  # both ranks: the loss is the global batch's
        loss, terms, z = forward(self, views, labels)
        calls[0] += 1
        return (loss * math.nan if calls[0] == 6 else loss), terms, z

    SSLMethod.forward = poisoned
    cfg = apply_overrides(
        load_recipe("digits_mmcr"),
        [
            *QUIET,
            f"--data.root={out}/data{rank}",
            f"--train.out_dir={out}/runs",
            "--train.log_every=4",
            "--train.checkpoint_every_steps=4",
            "--train.max_steps=20",
        ],
    )
    try:
        run_train(cfg, progress=False)
        outcome = "finished"
    except FloatingPointError as err:
        outcome = str(err)
    Path(out, f"outcome{rank}.txt").write_text(outcome)


def test_a_non_finite_loss_stops_every_rank_under_ddp_with_the_last_good_checkpoint(tmp_path):
    mp.spawn(_ddp_non_finite, args=(2, str(tmp_path)), nprocs=2)
    for rank in range(2):
        assert "not finite at a step between 5 and" in (tmp_path / f"outcome{rank}.txt").read_text()
    (run,) = (tmp_path / "runs").iterdir()
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 4


def test_the_online_head_ignores_unlabelled_images():
    from manifold_ssl.methods import build_method
    from manifold_ssl.models import build_backbone

    method = build_method("mmcr", build_backbone("convnet", 1, width=4), "16-8")
    method.attach_online_head(3)
    views = torch.randn(4, 2, 1, 8, 8)
    _, terms, _ = method(views, torch.full((4,), -1))  # STL-10's unlabeled split
    assert float(terms["online_ce"].detach()) == 0.0
    _, terms, _ = method(views, torch.tensor([0, -1, 2, -1]))
    assert 0 < float(terms["online_ce"].detach()) < 10


def test_the_training_clock_leaves_out_the_monitor_bounds_the_budget_and_survives_resume(
    tmp_path, monkeypatch
):
    # a fake clock: one second per training step, 1,000 per monitor call
    from types import SimpleNamespace

    now = [0.0]
    monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    step = loop._Trainer.train_step

    def timed_step(self):
        now[0] += 1.0
        return step(self)

    def slow_monitor(method, splits, device):
        now[0] += 1000.0
        return {"knn_val_accuracy": 0.5}

    monkeypatch.setattr(loop._Trainer, "train_step", timed_step)

    def run(*extra: str, resume=None):
        cfg = apply_overrides(
            load_recipe("digits_mmcr"),
            [
                *QUIET[:3],
                "--train.epochs=2",  # 38 steps of 32 images an epoch
                "--train.log_every=5",
                "--train.knn_every=1",
                f"--data.root={tmp_path / 'data'}",
                f"--train.out_dir={tmp_path / 'runs'}",
                *extra,
            ],
        )
        return run_train(cfg, progress=False, resume=resume, monitor=slow_monitor)

    result = run("--train.max_steps=45")
    records = read_metrics(result.run_dir / "metrics.jsonl")
    assert all(r["train_seconds"] == r["step"] for r in records if "train_seconds" in r)
    assert any("knn_val_accuracy" in r for r in records)  # the monitor ran, off the clock
    state = torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["train_seconds"] == 45
    # resumed: the clock goes on from 45; the budget counts this invocation's training only
    resumed = run("--train.time_budget_s=10", resume=result.run_dir)
    assert (resumed.status, resumed.step) == ("budget", 55)
    records = read_metrics(result.run_dir / "metrics.jsonl")
    assert all(r["train_seconds"] == r["step"] for r in records if "train_seconds" in r)
