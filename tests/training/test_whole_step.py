"""``train.compile: step``: the whole step (forward, objective, backward, optimisers, EMA, online
head) as one graph equals the eager step, for every method, with no graph break and no
recompile from step to step (the learning rate and the EMA coefficient change every step).

The graph is traced and run by ``aot_eager`` (the same graph, no compiler: inductor's kernels
differ from eager's by rounding, which would hide nothing here but cost a C++ compile per test).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TINY_MODEL
from torch._dynamo.utils import counters

from manifold_ssl.config import apply_overrides, load_recipe
from manifold_ssl.methods import METHODS, MULTIMODAL
from manifold_ssl.run import train as pretrain
from manifold_ssl.training.metrics import read_metrics


def _overrides(name: str) -> tuple[str, list[str]]:
    if name in MULTIMODAL:
        recipe = "digits_clip" if name == "clip" else "digits_multimodal_mmcr"
        return recipe, [
            "--views.num_views=1",
            "--model.projector=16",
            "--text.width=16",
            "--text.layers=1",
        ]
    extra = [f"--method.name={name}", "--method.loss={}"]
    if METHODS[name].predictor:
        extra.append("--model.predictor=16-16")
    if METHODS[name].target == "ema":
        extra.append("--method.momentum=0.9")
    return "digits_mmcr", extra


def _run(tmp_path, name: str, *more: str):
    recipe, extra = _overrides(name)
    cfg = apply_overrides(
        load_recipe(recipe),
        [
            f"--data.root={tmp_path / 'data'}",
            f"--train.out_dir={tmp_path / 'runs'}",
            *TINY_MODEL,
            "--train.epochs=2",
            "--train.max_steps=5",
            "--train.log_every=1",
            "--train.knn_every=0",
            "--optim.warmup_epochs=1",  # a learning rate that changes at every step
            *extra,
            *more,
        ],
    )
    return pretrain(cfg, progress=False)


def _losses(result) -> list[float]:
    return [r["loss"] for r in read_metrics(result.run_dir / "metrics.jsonl") if "loss" in r]


def _assert_same_training(eager, whole) -> None:
    a, b = _losses(eager), _losses(whole)
    assert len(a) == len(b) == 5
    # step 1 is eager in both runs; steps 2-5 run the graph: the same operations in the same
    # order, up to the functional optimisers' reassociation (float32 rounding)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    theirs = dict(whole.method.named_parameters())
    for key, p in eager.method.named_parameters():  # weights, EMA target and online head
        torch.testing.assert_close(theirs[key], p, rtol=1e-4, atol=1e-6, msg=key)
    for key, buf in eager.method.named_buffers():
        torch.testing.assert_close(dict(whole.method.named_buffers())[key], buf, msg=key)


def _whole(tmp_path, name: str, *more: str):
    torch._dynamo.reset()
    counters.clear()
    with torch._dynamo.config.patch(error_on_recompile=True):  # a recompile is an error
        whole = _run(
            tmp_path, name, "--train.compile=step", "--train.compile_backend=aot_eager", *more
        )
    assert counters["stats"]["unique_graphs"] == 1  # one graph, traced once, for steps 2-5
    assert not counters["graph_break"]  # fullgraph=True makes a break an error too
    return whole


@pytest.mark.parametrize("name", [*sorted(METHODS), *sorted(MULTIMODAL)])
def test_the_whole_step_graph_equals_the_eager_step(tmp_path, name):
    # SGD with momentum: Adam (the recipe's) scales a gradient that is rounding noise (the
    # last bias, which the loss standardises away: Barlow Twins, VICReg, CLAMP) to a full
    # step, which no two orders of summation share (measured: 6e-4 in projector.3.bias after
    # 5 steps); the optimisers are compared below, on MMCR
    sgd = ["--optim.name=sgd", "--optim.lr=0.05", "--optim.momentum=0.9"]
    _assert_same_training(
        _run(tmp_path / "eager", name, *sgd), _whole(tmp_path / "whole", name, *sgd)
    )


@pytest.mark.parametrize("optimiser", ["lars", "sgd", "adam", "adamw"])
def test_each_optimiser_steps_the_same_inside_the_graph(tmp_path, optimiser):
    opt = [f"--optim.name={optimiser}", "--optim.weight_decay=1e-4"]
    if optimiser in ("lars", "sgd"):
        opt += ["--optim.lr=0.05", "--optim.momentum=0.9"]
    eager = _run(tmp_path / "eager", "mmcr", *opt)
    _assert_same_training(eager, _whole(tmp_path / "whole", "mmcr", *opt))
