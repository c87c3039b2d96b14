"""The training loop: exact resume, atomic checkpoints, every method, bad inputs, DDP."""

from __future__ import annotations

import os
import tarfile

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from helpers import tiny_run_args

from manifold_ssl.config import apply_overrides
from manifold_ssl.methods import build_method
from manifold_ssl.models import build_backbone
from manifold_ssl.run import build_method_for
from manifold_ssl.run import train as pretrain
from manifold_ssl.training import load_checkpoint, save_checkpoint
from manifold_ssl.training.metrics import read_metrics


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}


def test_resume_continues_exactly_where_training_stopped(tiny_cfg):
    full = pretrain(tiny_cfg(), progress=False)
    assert full.status == "finished" and full.step == 2 * (1221 // 64)
    stopped = pretrain(tiny_cfg("--train.max_steps=23"), progress=False)  # mid-epoch 2
    assert stopped.status == "max_steps" and stopped.step == 23
    # resumed from its last step (killed before the run was marked done): nothing is trained
    again = pretrain(tiny_cfg("--train.max_steps=23"), resume=stopped.run_dir, progress=False)
    assert again.status == "max_steps" and again.step == 23
    assert max(losses(stopped.run_dir)) == 23
    resumed = pretrain(tiny_cfg(), resume=stopped.run_dir, progress=False)
    assert resumed.status == "finished" and resumed.step == full.step
    a, b = losses(full.run_dir), losses(stopped.run_dir)
    assert sorted(a) == sorted(b)  # no step lost or logged twice
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-6), step
    for (k, v), (k2, v2) in zip(
        full.method.state_dict().items(), resumed.method.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.allclose(v.float(), v2.float(), atol=1e-5), k


def test_resume_refuses_a_different_config(tiny_cfg):
    run = pretrain(tiny_cfg("--train.max_steps=2"), progress=False)
    with pytest.raises(ValueError, match=r"other values of \['optim.lr'\]"):
        pretrain(tiny_cfg("--optim.lr=0.5"), resume=run.run_dir, progress=False)


def test_interrupted_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"config": {}, "model": {"w": torch.ones(3)}, "step": 1}, path)

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial bytes of a checkpoint")
        raise KeyboardInterrupt("killed during the write")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"config": {}, "model": {"w": torch.zeros(3)}, "step": 2}, path)
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["model"]["w"], torch.ones(3))


def test_checkpoint_loading_rejects_foreign_files(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        load_checkpoint(bad)
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a manifold-ssl checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_methods_validate_their_heads():
    bb = build_backbone("convnet", 1, width=4)
    with pytest.raises(ValueError, match="predictor"):
        build_method("byol", bb, "32-16", momentum=0.9)
    with pytest.raises(ValueError, match="momentum"):
        build_method("byol", bb, "32-16", predictor="16-16")
    with pytest.raises(ValueError, match="no predictor"):
        build_method("mmcr", bb, "32-16", predictor="16-16")
    with pytest.raises(ValueError, match="bad keyword"):
        build_method("mmcr", bb, "32-16", loss_kwargs={"lambda": 1.0})
    with pytest.raises(ValueError, match="unknown method"):
        build_method("moco", bb, "32-16")


def _write_imagefolder(root, corrupt: bool = False):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            d = root / "tiny" / split / cls
            d.mkdir(parents=True)
            for i in range(6):
                Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)).save(
                    d / f"{i}.png"
                )
    if corrupt:
        (root / "tiny" / "train" / "dog" / "9.png").write_bytes(b"\x89PNG broken")


def test_imagefolder_from_a_tar_archive(tmp_path):
    from manifold_ssl.data import load_dataset

    _write_imagefolder(tmp_path)
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tiny", arcname="tiny")
    data = load_dataset("imagefolder", "train", tmp_path / "cache", str(archive))
    assert data.images.shape == (12, 3, 10, 10) and data.classes == ["cat", "dog"]
    assert data.labels.tolist() == [0] * 6 + [1] * 6
    again = load_dataset("imagefolder", "train", tmp_path / "cache", str(archive))  # from cache
    assert torch.equal(again.images, data.images)
    folder = load_dataset("imagefolder", "train", tmp_path / "cache2", str(tmp_path / "tiny"))
    assert torch.equal(folder.images, data.images)


def test_bad_data_inputs_name_the_problem(tmp_path):
    from manifold_ssl.data import load_dataset

    _write_imagefolder(tmp_path, corrupt=True)
    with pytest.raises(ValueError, match=r"cannot decode image .*9\.png"):
        load_dataset("imagefolder", "train", tmp_path / "c", str(tmp_path / "tiny"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("imagefolder", "train", tmp_path / "c", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist", "train", tmp_path / "c")
    with pytest.raises(ValueError, match="needs data.path"):
        load_dataset("imagefolder", "train", tmp_path / "c")


def test_missing_cifar_offline_says_where_to_put_it(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    from manifold_ssl.data import load_dataset

    def no_network(self, *a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(tvd.CIFAR10, "download", no_network)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py.*cifar-10-python.tar.gz"):
        load_dataset("cifar10", "train", tmp_path)


def _ddp_worker(rank: int, rendezvous: str, cfg_overrides: list[str], run_dir: str) -> None:
    # a file rendezvous in the test's folder: no port chosen in advance (another process may
    # take it) and no store hosted by rank 0 that rank 1 could still need while rank 0 exits
    import gc

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2
    )
    from manifold_ssl.config import load_recipe
    from manifold_ssl.run import pretrain as run_pretrain  # with the probes of cfg.probes

    cfg = apply_overrides(load_recipe("digits_mmcr"), cfg_overrides)
    gc.disable()  # as if the collector never ran before the process ends
    result = run_pretrain(cfg, progress=False, run_dir=run_dir)
    assert not result.ctx.owns_group and torch.distributed.is_initialized()  # ours to end
    # the DDP wrapper (a reference cycle holding the group) is gone: destroying the group
    # frees it now, not in interpreter finalisation, where gloo's threads abort the process
    ddp = torch.nn.parallel.DistributedDataParallel
    assert not [o for o in gc.get_objects() if isinstance(o, ddp)]
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def test_two_process_ddp_follows_the_single_process_loss_curve(tmp_path, tiny_cfg):
    overrides = [
        f"--data.root={tmp_path / 'data'}",
        "--model.width=4",
        "--model.projector=32-16",
        "--views.num_views=2",
        "--train.batch_size=64",
        "--train.epochs=1",
        "--train.max_steps=8",
        "--train.log_every=1",
        "--train.knn_every=0",
        "--model.sync_bn=true",
        # rank 0 probes alone (its objectives and BatchNorms must meet no collective)
        "--probes.every_steps=2",
        "--probes.knn_bank=64",
    ]
    from manifold_ssl.run import pretrain as run_pretrain

    single = run_pretrain(
        apply_overrides(tiny_cfg(), overrides), progress=False, run_dir=tmp_path / "single"
    )
    rendezvous = str(tmp_path / "rendezvous")
    mp.spawn(_ddp_worker, args=(rendezvous, overrides, str(tmp_path / "ddp")), nprocs=2, join=True)
    a, b = losses(single.run_dir), losses(tmp_path / "ddp")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4), step
    probed = [r for r in read_metrics(tmp_path / "ddp" / "metrics.jsonl") if "probe/seconds" in r]
    assert probed and probed[0]["step"] == 0


def test_stale_tmp_file_from_a_crash_does_not_break_the_next_save(tmp_path):
    path = tmp_path / "last.pt"
    (tmp_path / "last.pt.tmp").write_bytes(b"junk")
    save_checkpoint({"config": {}, "model": {}, "step": 3}, path)
    assert load_checkpoint(path)["step"] == 3
    assert not (tmp_path / "last.pt.tmp").exists()


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    code = "import sys\nfrom manifold_ssl.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    args = [
        sys.executable,
        "-c",
        code,
        "pretrain",
        "--quiet",
        "--no-eval",
        *tiny_run_args(tmp_path, "--train.epochs=50", "--train.log_every=1", "--train.knn_every=0"),
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    metrics = None
    while time.time() < deadline:
        runs = (
            list((tmp_path / "runs").glob("*/metrics.jsonl"))
            if (tmp_path / "runs").exists()
            else []
        )
        if runs and runs[0].read_text().count("\n") >= 3:
            metrics = runs[0]
            break
        time.sleep(0.2)
    assert metrics is not None, proc.communicate(timeout=30)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert b"stopped (interrupted)" in out + err
    state = load_checkpoint(metrics.parent / "checkpoints" / "last.pt")
    assert 3 <= state["step"] < 50 * 19


def test_metrics_carry_the_cumulative_training_flops(tiny_cfg):
    from torch.utils.flop_counter import FlopCounterMode

    from manifold_ssl.run import build_method_for

    cfg = tiny_cfg("--train.max_steps=4")
    result = pretrain(cfg, progress=False)
    records = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if "loss" in r]
    # an independent count: one forward + backward of the same method on a batch of views
    method = build_method_for(cfg, 1)
    method.attach_online_head(10)  # the online linear head trains in the same step
    views = torch.randn(cfg.train.batch_size, cfg.views.num_views, 1, 8, 8)
    labels = torch.randint(0, 10, (cfg.train.batch_size,))
    with FlopCounterMode(display=False) as counter:
        loss, terms, _ = method(views, labels)
        (loss + terms["online_ce"]).backward()
    per_step = counter.get_total_flops()
    assert per_step > 0
    assert [r["flops"] for r in records] == [r["step"] * per_step for r in records]


def test_the_loop_reads_in_short_functions():
    import ast
    from pathlib import Path

    import manifold_ssl.training.loop as loop

    tree = ast.parse(Path(loop.__file__).read_text())
    long = {
        n.name: n.end_lineno - n.lineno + 1
        for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef) and n.end_lineno - n.lineno + 1 > 60
    }
    assert not long, long


def test_models_are_built_from_their_own_seed_without_touching_the_global_rng(tiny_cfg):
    from manifold_ssl.run import build_method_for

    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = build_method_for(tiny_cfg(), 1)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(999)
    b = build_method_for(tiny_cfg(), 1)
    c = build_method_for(tiny_cfg(), 1, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_the_public_train_step_is_one_optimiser_step_and_flags_a_nonfinite_loss(tiny_cfg):
    # the step the loop takes and the benchmarks time (issue 20)
    from manifold_ssl.run.build import optimizer_for
    from manifold_ssl.training import train_step

    cfg = tiny_cfg("--method.loss.nuclear=polar")  # no eigensolver to fail on the NaNs
    method = build_method_for(cfg, 1)
    opt = optimizer_for(cfg, method)
    views = torch.rand(8, 2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    before = [p.detach().clone() for p in method.parameters()]
    flag = torch.zeros((), dtype=torch.bool)
    loss, _, z = train_step(method, opt, views, nonfinite=flag)
    assert torch.isfinite(loss) and z.shape[:2] == (8, 2) and not bool(flag)
    assert any(not torch.equal(a, b) for a, b in zip(before, method.parameters(), strict=True))
    train_step(method, opt, views * float("nan"), nonfinite=flag)
    assert bool(flag)  # recorded on the device, not raised: the loop reads it at logging steps


def test_a_run_directory_is_read_by_one_rule(tiny_cfg, tmp_path):
    from manifold_ssl.run.record import RunDir, method_from_state

    result = pretrain(tiny_cfg("--train.epochs=1"), progress=False)
    run = RunDir(result.run_dir)
    cfg, state = run.trained()
    assert cfg.train.epochs == 1 and state["step"] == result.step
    assert run.metrics() and run.resume_state(cfg)["step"] == result.step
    method = method_from_state(cfg, state, result.splits)
    for a, b in zip(method.state_dict().values(), result.method.state_dict().values(), strict=True):
        assert torch.equal(a.cpu(), b.cpu())
    # a checkpoint of another config than config.yaml is not this run's
    other = run.config()
    other.optim.lr *= 2
    with pytest.raises(ValueError, match="optim.lr"):
        run.resume_state(other)
    with pytest.raises(ValueError, match="not a run directory"):
        RunDir(tmp_path).config()
