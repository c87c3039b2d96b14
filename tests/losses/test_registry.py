"""Every registered loss, tested for free: reference values and gradients, descent, edge-case
gradients, and clear errors. Adding a loss to ``LOSSES`` without a reference fails here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from reference import REFERENCES, numerical_grad

from manifold_ssl.losses import LOSSES

NAMES = sorted(LOSSES)
STOP_GRADIENT_ON_SECOND = {"byol", "simsiam"}  # the target branch is detached by design
BAD_HYPERPARAMETERS = {
    "mmcr": [
        {"lambd": -0.1},
        {"lambd": math.nan},
        {"local_views": "momentum"},
        {"nuclear": "svd"},
        {"polar_steps": 0},
    ],
    "multimodal_mmcr": [{"lambd": -1.0}, {"nuclear": "eigh"}, {"polar_steps": 2.5}],
    "clamp": [{"r_s": 0.0}, {"r_s": -7.0}, {"covariance": "sample"}, {"form": "jammed"}],
    "matrix_ssl": [
        {"gamma": -1.0},
        {"lambd": -0.5},
        {"mu": -0.5},
        {"order": 0},
        {"order": 2.5},
        {"form": "literal"},
    ],
    "simclr": [{"temperature": 0.0}, {"temperature": math.inf}],
    "barlow_twins": [{"lambd": -0.0051}],
    "vicreg": [{"sim_coeff": math.nan}, {"std_coeff": -25.0}, {"cov_coeff": -1.0}],
    "tcr": [{"eps": 0.0}],
    "mec": [{"eps": -0.5}, {"mu": 0.0}, {"order": -1}],
    "clip": [{"logit_scale": 0.0}],
    "alignment": [{"alpha": 0.0}],
    "uniformity": [{"t": -2.0}],
    "mce_lm": [{"order": 0}, {"eps": -1.0}],
    "byol": [],
    "simsiam": [],
}


def make_inputs(name: str, gen: torch.Generator, dtype=torch.float64, B=7, K=3, D=5) -> list:
    kind = LOSSES[name].inputs
    if kind == "views":
        return [torch.randn(B, K, D, generator=gen, dtype=dtype)]
    if kind == "pair":
        z1 = torch.randn(B, D, generator=gen, dtype=dtype)
        return [z1, z1 + 0.5 * torch.randn(B, D, generator=gen, dtype=dtype)]
    n, v, d = 4, 6, 3
    return [
        torch.randn(n, v, generator=gen, dtype=dtype),
        torch.randint(0, v, (n,), generator=gen),
        torch.randn(v, d, generator=gen, dtype=dtype),
    ]


def float_indices(inputs: list) -> list[int]:
    return [i for i, x in enumerate(inputs) if x.is_floating_point()]


def test_every_loss_has_a_reference_and_bad_hyperparameters():
    assert set(NAMES) == set(REFERENCES), "add a float64 reference to tests/reference.py"
    assert set(NAMES) == set(BAD_HYPERPARAMETERS)


@pytest.mark.parametrize("name", NAMES)
def test_matches_reference_value_and_gradient(name, gen):
    inputs = make_inputs(name, gen)
    for i in float_indices(inputs):
        inputs[i].requires_grad_(True)
    loss = LOSSES[name]()(*inputs)
    assert loss.dtype == torch.float64
    arrays = [x.detach().numpy().copy() for x in inputs]
    expected = REFERENCES[name](*arrays)
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-9, atol=1e-9)

    loss.backward()
    for i in float_indices(inputs):
        if name in STOP_GRADIENT_ON_SECOND and i == 1:
            assert inputs[i].grad is None or not inputs[i].grad.any()
            continue
        num = numerical_grad(REFERENCES[name], arrays, i)
        scale = max(1.0, np.abs(num).max())
        np.testing.assert_allclose(inputs[i].grad.numpy(), num, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("name", NAMES)
def test_loss_decreases_on_free_embeddings(name, gen):
    inputs = make_inputs(name, gen, dtype=torch.float32, B=16, K=4, D=8)
    params = [torch.nn.Parameter(inputs[i]) for i in float_indices(inputs)]
    for i, p in zip(float_indices(inputs), params, strict=True):
        inputs[i] = p
    loss_fn = LOSSES[name]()
    opt = torch.optim.Adam(params, lr=0.05)
    first = loss_fn(*inputs).item()
    for _ in range(40):
        opt.zero_grad()
        loss = loss_fn(*inputs)
        loss.backward()
        opt.step()
    last = loss_fn(*inputs).item()
    assert math.isfinite(last)
    assert last < first - 1e-3 * max(1.0, abs(first)), (first, last)


def _edge_cases(name: str, gen: torch.Generator) -> dict[str, list]:
    kind = LOSSES[name].inputs
    base = make_inputs(name, gen, dtype=torch.float32, B=6, K=3, D=9)
    if kind == "views":
        z = base[0]
        return {
            "identical_views": [z[:, :1].expand(-1, 3, -1).clone()],
            "collapsed_batch": [z[:1, :1].expand(6, 3, -1).clone()],
            "repeated_singular_values": [torch.eye(9)[:6].unsqueeze(1).repeat(1, 3, 1)],
            "zeros": [torch.zeros(6, 3, 9)],
        }
    if kind == "pair":
        z1, _ = base
        return {
            "identical_pair": [z1, z1.clone()],
            "collapsed_batch": [z1[:1].expand(6, -1).clone(), z1[:1].expand(6, -1).clone()],
            "repeated_singular_values": [torch.eye(9)[:6].clone(), torch.eye(9)[:6].clone()],
            "zeros": [torch.zeros(6, 9), torch.zeros(6, 9)],
        }
    logits, targets, emb = base
    return {
        "uniform_prediction": [torch.zeros_like(logits), targets, emb],
        "confident_prediction": [
            100.0 * torch.nn.functional.one_hot(targets, 6).float(),
            targets,
            emb,
        ],
        "repeated_embeddings": [logits, targets, emb[:1].expand(6, -1).clone()],
    }


@pytest.mark.parametrize("name", NAMES)
def test_gradients_finite_at_edge_cases(name, gen):
    for case, inputs in _edge_cases(name, gen).items():
        inputs = [x.clone().requires_grad_(x.is_floating_point()) for x in inputs]
        loss = LOSSES[name]()(*inputs)
        assert torch.isfinite(loss), (case, loss)
        loss.backward()
        for x in inputs:
            if x.is_floating_point() and x.grad is not None:
                assert torch.isfinite(x.grad).all(), case


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_raise_clear_errors(name, gen):
    loss_fn = LOSSES[name]()
    inputs = make_inputs(name, gen, dtype=torch.float32)
    first = inputs[0]
    nan = first.clone()
    nan.view(-1)[0] = math.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        loss_fn(nan, *inputs[1:])
    inf = first.clone()
    inf.view(-1)[-1] = math.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        loss_fn(inf, *inputs[1:])
    with pytest.raises(ValueError, match="shape"):
        loss_fn(first.reshape(-1), *inputs[1:])
    kind = LOSSES[name].inputs
    if kind == "views":
        with pytest.raises(ValueError, match="K >= 2"):
            loss_fn(first[:, :1])
    if kind == "pair":
        with pytest.raises(ValueError, match="same shape"):
            loss_fn(first, inputs[1][:, :-1])
    if kind == "lm":
        with pytest.raises(ValueError, match="embeddings"):
            loss_fn(inputs[0], inputs[1], inputs[2][:-1])
        with pytest.raises(ValueError, match="targets"):
            loss_fn(inputs[0], torch.full_like(inputs[1], 99), inputs[2])


@pytest.mark.parametrize("name, kwargs", [(n, kw) for n in NAMES for kw in BAD_HYPERPARAMETERS[n]])
def test_invalid_hyperparameters_raise(name, kwargs):
    key = next(iter(kwargs))
    with pytest.raises(ValueError, match=key):
        LOSSES[name](**kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_is_as_accurate_as_float32_on_the_rounded_inputs(name, gen):
    # a bf16 training step: the embeddings are bf16 numbers, the loss runs under autocast.
    # Every loss returns float32 and computes in at least float32 inside, so its error against
    # float64 truth on those numbers is the float32 computation's plus the output's rounding.
    rounded = [
        x.to(torch.bfloat16) if x.is_floating_point() else x
        for x in make_inputs(name, gen, B=32, K=2, D=16)
    ]
    loss_fn = LOSSES[name]()
    truth = loss_fn(*[x.double() if x.is_floating_point() else x for x in rounded])
    as32 = loss_fn(*[x.float() if x.is_floating_point() else x for x in rounded])
    error32 = abs(as32.double() - truth).item()
    eps32 = torch.finfo(torch.float32).eps
    for leaves in ("float32", "bfloat16"):  # float32 parameters under autocast; bf16 outputs
        xs = [x.to(getattr(torch, leaves)) if x.is_floating_point() else x for x in rounded]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            value = loss_fn(*xs)
        assert value.dtype == torch.float32, (name, leaves, value.dtype)
        error = abs(value.double() - truth).item()
        assert error <= 2 * error32 + 4 * eps32 * (abs(truth.item()) + 1), (name, leaves, error)


@pytest.mark.parametrize(
    ("name", "old"), [("mmcr", "lmbda"), ("multimodal_mmcr", "lmbda"), ("matrix_ssl", "lam")]
)
def test_the_old_spellings_of_lambda_still_work_with_a_warning(name, old):
    # λ is spelled lambd everywhere (issue 20); old recipes and checkpoints keep working
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated; the keyword is now lambd"):
        old_style = LOSSES[name](**{old: 0.25})
    assert repr(old_style) == repr(LOSSES[name](lambd=0.25))
    with pytest.raises(TypeError, match="give lambd only"):
        LOSSES[name](**{old: 0.25, "lambd": 0.25})


@pytest.mark.parametrize("name", NAMES)
def test_one_return_convention(name, gen):
    """Every loss: ``forward(*inputs)`` the scalar loss; ``return_terms=True`` the same loss and
    a dict of detached tensors (the terms a training loop logs)."""
    inputs = make_inputs(name, gen)
    module = LOSSES[name]()
    loss = module(*inputs)
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0
    out = module(*inputs, return_terms=True)
    assert isinstance(out, tuple) and len(out) == 2
    again, terms = out
    torch.testing.assert_close(again, loss, rtol=0, atol=0)
    assert isinstance(terms, dict)
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad for v in terms.values())
