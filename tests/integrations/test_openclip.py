"""Multimodal MMCR and CLIP inside OpenCLIP: its call pattern, its DDP (no unused parameters),
and its own trainer (open_clip_train) end to end on its synthetic data."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

open_clip = pytest.importorskip("open_clip")

from manifold_ssl.openclip import openclip_loss  # noqa: E402

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("openclip") / "mssl-tiny.json"
    path.write_text(json.dumps(TINY))
    open_clip.add_model_config(str(path))
    return path


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return open_clip.create_model("mssl-tiny", output_dict=True)  # as open_clip_train makes it


def _batch(n: int = 8, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=gen)
    texts = torch.randint(1, 1000, (n, 16), generator=gen)
    return images, texts


@pytest.mark.parametrize("name", ["multimodal_mmcr", "clip"])
def test_losses_take_openclips_call_and_reach_every_parameter(tiny_config, name):
    model = _model()
    images, texts = _batch()
    model_out = model(images, texts)
    assert {"image_features", "text_features", "logit_scale"} <= set(model_out)
    losses = openclip_loss(name)(**model_out, output_dict=True)  # open_clip_train's call
    assert isinstance(losses, dict) and len(losses) == 1
    total = sum(losses.values())
    total.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} received no gradient"
        assert torch.isfinite(p.grad).all(), pname
    if name == "multimodal_mmcr":  # no temperature: a zero gradient, not none
        assert float(model.logit_scale.grad) == 0.0
    else:
        assert float(model.logit_scale.grad) != 0.0
    bias = torch.zeros((), requires_grad=True)  # SigLIP-style models return a logit_bias too
    openclip_loss(name)(**model(images, texts), logit_bias=bias, output_dict=True)
    sum(openclip_loss(name)(**model(images, texts), logit_bias=bias).view(1)).backward()
    assert bias.grad is not None and float(bias.grad) == 0.0


def _ddp_worker(rank: int, rendezvous: str, name: str, out: str, config: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2
    )
    open_clip.add_model_config(config)
    model = torch.nn.parallel.DistributedDataParallel(_model())  # find_unused_parameters off
    loss_fn = openclip_loss(name)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    images, texts = _batch(8)
    values = []
    for _ in range(2):
        sl = slice(4 * rank, 4 * rank + 4)
        losses = loss_fn(**model(images[sl], texts[sl]), output_dict=True)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        values.append(float(total.detach()))
    if rank == 0:
        torch.save(values, out)
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("name", ["multimodal_mmcr", "clip"])
def test_two_process_ddp_equals_the_global_batch(tiny_config, tmp_path, name):
    """DDP as OpenCLIP runs it (find_unused_parameters off) for two steps: no unused-parameter
    error, and each step's loss equals one process's on the global batch."""
    out = tmp_path / "losses.pt"
    mp.spawn(
        _ddp_worker,
        args=(str(tmp_path / "rdzv"), name, str(out), str(tiny_config)),
        nprocs=2,
    )
    model, loss_fn = _model(), openclip_loss(name)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    images, texts = _batch(8)
    single = []
    for _ in range(2):
        total = loss_fn(**model(images, texts))
        opt.zero_grad()
        total.backward()
        opt.step()
        single.append(float(total.detach()))
    assert torch.load(out) == pytest.approx(single, rel=1e-4)


def _openclip_train(tmp_path, config, name, nproc: int):
    args = [
        "--loss",
        name,
        "--model-config",
        str(config),
        "--",
        "--dataset-type",
        "synthetic",
        "--train-num-samples",
        "32",
        "--batch-size",
        "4",
        "--model",
        "mssl-tiny",
        "--epochs",
        "1",
        "--precision",
        "fp32",
        "--workers",
        "0",
        "--logs",
        str(tmp_path / "logs"),
        "--name",
        f"{name}-{nproc}",
        "--save-frequency",
        "0",
        "--dist-backend",
        "gloo",
        "--log-every-n-steps",
        "1",
    ]
    code = "import sys\nfrom manifold_ssl.cli import main\nsys.exit(main(sys.argv[1:]))"
    if nproc == 1:
        cmd = [sys.executable, "-c", code, "openclip", *args]
    else:
        script = tmp_path / "launch.py"
        script.write_text(code)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
        cmd += ["--standalone", str(script), "openclip", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return (tmp_path / "logs" / f"{name}-{nproc}" / "out.log").read_text()


@pytest.mark.parametrize("nproc", [1, 2])
def test_open_clip_train_runs_with_multimodal_mmcr(tiny_config, tmp_path, nproc):
    log = _openclip_train(tmp_path, tiny_config, "multimodal_mmcr", nproc)
    assert "Mmcr_loss" in log and "Start epoch 0" in log


def test_bad_openclip_options_are_one_line_errors_before_anything_starts(
    tmp_path, capsys, monkeypatch
):
    # issue 18.15 and 18.20: tracebacks, an ignored --model-config and --lmbda with clip, and a
    # logs/ folder left by each call
    from manifold_ssl.cli import main

    monkeypatch.chdir(tmp_path)
    cases = [
        ([], "give open_clip_train's arguments after --"),
        (["--lmbda", "0.5", "--loss", "clip", "--", "--model", "RN50"], "has none"),
        (["--model-config", "missing.json", "--", "--model", "RN50"], "does not exist"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as stop:
            main(["openclip", *argv])
        assert stop.value.code == 2 and message in capsys.readouterr().err
    assert main(["openclip", "--lmbda", "-1", "--", "--model", "RN50"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lambd must be a finite number >= 0" in err
    assert main(["openclip", "--", "--model", "RN50"]) == 2  # no data: OpenCLIP's assert
    assert "At least one train or eval dataset" in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()
