"""kNN and the linear probe against independent references; the inference copy of an encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from manifold_ssl.evaluation.features import extract_features, inference_copy
from manifold_ssl.evaluation.knn import knn_predict
from manifold_ssl.evaluation.linear import Preconditioner, fit_logistic, linear_probe
from manifold_ssl.models.backbones import build_backbone


def _blobs(gen: torch.Generator, n=600, f=12, c=4, separation=1.5, correlated=False):
    """Gaussian classes; ``correlated`` mixes the features so their covariance spans 1e-4..1e2."""
    y = torch.arange(n) % c
    x = separation * torch.randn(c, f, generator=gen)[y] + torch.randn(n, f, generator=gen)
    if correlated:
        q, _ = torch.linalg.qr(torch.randn(f, f, generator=gen))
        x = x @ q @ torch.diag(torch.logspace(-2, 1, f)) @ q.T
    return x, y


def _sklearn_fit(x: torch.Tensor, y: torch.Tensor, wd: float) -> tuple[np.ndarray, np.ndarray]:
    # scikit-learn minimises C·Σ CE + ½‖W‖² (bias unpenalised) = N·C·(mean CE + wd/2 ‖W‖²)
    # with wd = 1 / (N·C).
    clf = LogisticRegression(C=1.0 / (len(x) * wd), tol=1e-12, max_iter=10_000)
    clf.fit(x.double().numpy(), y.numpy())
    return clf.coef_.T, clf.intercept_


def _objective(x, y, wd, w, b) -> float:
    w, b = torch.as_tensor(w, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    ce = torch.nn.functional.cross_entropy(x.double() @ w + b, y)
    return float(ce + 0.5 * wd * (w * w).sum())


def _newton(x, y, wd, w, b) -> tuple[float, torch.Tensor]:
    """The squared Newton decrement ``gᵀH⁺g`` and the Newton step ``H⁺g`` (flattened w, then b)
    of the objective at (w, b), in float64 (H is singular along a constant added to every
    class's bias, which g has no component along)."""
    f, c = w.shape

    def objective(p: torch.Tensor) -> torch.Tensor:
        weights = p[: f * c].reshape(f, c)
        logits = x.double() @ weights + p[f * c :]
        return torch.nn.functional.cross_entropy(logits, y) + 0.5 * wd * (weights**2).sum()

    p = torch.cat([w.flatten(), b]).double().requires_grad_(True)
    (g,) = torch.autograd.grad(objective(p), p)
    hessian = torch.autograd.functional.hessian(objective, p.detach())
    step = torch.linalg.pinv(hessian, hermitian=True) @ g
    return float(g @ step), step


@pytest.mark.parametrize("wd", [1e-1, 1e-3])
@pytest.mark.parametrize("correlated", [False, True])
def test_fit_logistic_matches_scikit_learn(gen, wd, correlated):
    x, y = _blobs(gen, correlated=correlated)
    w_ref, b_ref = _sklearn_fit(x, y, wd)
    best = _objective(x, y, wd, w_ref, b_ref)
    # Float32 passes compute the logits z_nc = x_nᵀw_c with rounding errors of standard
    # deviation ~√F·u₃₂·|x_n|ᵀ|w_c| (independent roundings, Higham, Accuracy and Stability, §3;
    # which kernel sums in which order changes the errors, not their size); a sample's loss
    # lse(z_n) − z_ny moves by at most twice its largest logit error, and the mean over N samples
    # averages them by 1/√N. The line search compares two such evaluations, so it stops where
    # the objective's decrease is below ~4·√(F/N)·u₃₂·mean_n max_c |x_n|ᵀ|w_c| (1.3e-7 to 1.5e-6
    # here; measured gaps 1e-10 to 7e-8 under every kernel path selectable on an AVX2 CPU, and
    # 1.6e-7 against 4.6e-7 on an AVX-512 Xeon). Float64 passes stop on a loss change of 1e-12.
    n, f = x.shape
    logits = x.double().abs() @ torch.as_tensor(w_ref).abs()  # |x_n|ᵀ|w_c|
    float32_gap = 4 * (f / n) ** 0.5 * 2.0**-24 * float(logits.amax(1).mean())
    for dtype, gap in [(torch.float32, float32_gap), (torch.float64, 1e-10)]:
        w, b = fit_logistic(x.to(dtype), y, 4, wd, max_iter=500, tolerance=1e-9)
        assert _objective(x, y, wd, w, b) - best < gap, dtype
    # The weights (and the bias, defined up to a constant shared by the classes) agree to
    # what a loss gap of 1e-12 resolves at curvature wd: sqrt(2e-12 / 1e-3) ≈ 5e-5.
    np.testing.assert_allclose(w.numpy(), w_ref, atol=1e-4 * np.abs(w_ref).max())
    b, b_ref = b.numpy() - b.numpy().mean(), b_ref - b_ref.mean()
    np.testing.assert_allclose(b, b_ref, atol=1e-4 * max(1.0, np.abs(b_ref).max()))


def test_preconditioning_converges_where_plain_lbfgs_stalls(gen):
    # Overlapping classes in correlated features (what probes see): plain L-BFGS is far from
    # the optimum after 40 iterations, the preconditioned one at it.
    x, y = _blobs(gen, n=2000, f=64, separation=0.3, correlated=True)
    x = ((x - x.mean(0)) / x.std(0)).double()
    w_ref, b_ref = _sklearn_fit(x, y, 1e-4)
    best = _objective(x, y, 1e-4, w_ref, b_ref)
    gap = {}
    for eigen in (True, False):
        precond = Preconditioner.of(x, eigen=eigen)
        w, b = fit_logistic(x, y, 4, 1e-4, max_iter=40, precond=precond, tolerance=1e-12)
        gap[eigen] = _objective(x, y, 1e-4, w, b) - best
    assert gap[True] < 1e-8 and gap[False] > 1e-3, gap


def test_chunked_passes_give_the_same_fit(gen):
    x, y = _blobs(gen)
    x = x.double()
    w, b = fit_logistic(x, y, 4, 1e-3, tolerance=1e-9)
    w_chunked, b_chunked = fit_logistic(x, y, 4, 1e-3, tolerance=1e-9, chunk=97)
    # Both stop on a loss change of 1e-12, which does not bound their distance to the optimum
    # (chunking reorders the float64 sums, and where L-BFGS stops moves with them: 8e-12 to
    # 8e-10 apart in objective across the kernel paths). That distance is the Newton step H⁺g
    # at each stopping point, and the objective's the squared Newton decrement λ² = gᵀH⁺g
    # (f − f* <= λ² for λ <= 0.68, Boyd & Vandenberghe §9.6.3; ½λ² in the quadratic model): the
    # two fits differ by at most the sums, the step's up to the quadratic model's factor 2.
    decrement, step = _newton(x, y, 1e-3, w, b)
    decrement_chunked, step_chunked = _newton(x, y, 1e-3, w_chunked, b_chunked)
    gap = abs(_objective(x, y, 1e-3, w, b) - _objective(x, y, 1e-3, w_chunked, b_chunked))
    assert gap <= decrement + decrement_chunked
    centred = [torch.cat([v.flatten(), c - c.mean()]) for v, c in ((w, b), (w_chunked, b_chunked))]
    distance = 2 * (float(step.norm()) + float(step_chunked.norm()))
    assert float((centred[0] - centred[1]).norm()) <= distance


def test_linear_probe_selects_on_validation_and_reports_test_once(gen):
    x, y = _blobs(gen, n=900)
    train, val, test = (x[:600], y[:600]), (x[600:750], y[600:750]), (x[750:], y[750:])
    wds = [1e-4, 1e-2, 1.0]
    out = linear_probe(train, val, test, 4, wds)
    assert set(out["val_by_weight_decay"]) == set(wds)
    best = max(out["val_by_weight_decay"].values())
    assert out["val_accuracy"] == best
    # Ties go to the stronger weight decay.
    tied = [wd for wd in wds if out["val_by_weight_decay"][wd] == best]
    assert out["weight_decay"] == max(tied)
    # The reported test accuracy is the chosen classifier's, fitted on train only.
    mean, std = train[0].mean(0), train[0].std(0)
    w, b = _sklearn_fit((train[0] - mean) / std, train[1], out["weight_decay"])
    pred = (((test[0] - mean) / std).double().numpy() @ w + b).argmax(1)
    assert out["test_accuracy"] == pytest.approx((pred == test[1].numpy()).mean(), abs=1 / 150)
    out64 = linear_probe(train, val, test, 4, wds, dtype=torch.float64)
    assert out64["val_by_weight_decay"] == out["val_by_weight_decay"]
    with pytest.raises(ValueError, match="weight_decays"):
        linear_probe(train, val, test, 4, [])


def test_knn_matches_a_brute_force_vote(gen):
    bank, labels = _blobs(gen, n=300, f=8, c=3)
    queries = torch.randn(50, 8, generator=gen)
    k, t = 7, 0.2
    pred = knn_predict(bank, labels, queries, 3, k=k, temperature=t, chunk=16)
    for i, q in enumerate(queries):
        sims = torch.nn.functional.cosine_similarity(bank, q[None], dim=1)
        top = sims.argsort(descending=True)[:k]
        votes = torch.zeros(3)
        for j in top:
            votes[labels[j]] += torch.exp(sims[j] / t)
        assert pred[i] == votes.argmax()
    # k is capped at the bank's size: then every training point votes.
    assert knn_predict(bank[:5], labels[:5], queries, 3, k=200).shape == (50,)


def test_inference_copy_folds_batchnorm_without_touching_the_encoder(gen):
    torch.manual_seed(0)
    enc = build_backbone("resnet18", 3, small_images=True, width=4)
    enc(torch.randn(16, 3, 32, 32))  # give BN non-trivial running statistics
    enc.train()
    state = {k: v.clone() for k, v in enc.state_dict().items()}
    fused = inference_copy(enc)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert enc.training and all(torch.equal(v, enc.state_dict()[k]) for k, v in state.items())
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8, generator=gen)
    feats = extract_features(enc, images, [0.5] * 3, [0.25] * 3, batch_size=8)
    enc.eval()
    with torch.no_grad():
        eager = enc((images.float() / 255 - 0.5) / 0.25)
    torch.testing.assert_close(feats, eager, atol=1e-4, rtol=1e-4)


def test_inference_copy_runs_an_untraceable_encoder_unfused():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x):
            return self.lin(x) if x.sum() > 0 else -self.lin(x)  # data-dependent: FX cannot trace

    enc = Branchy()
    x = torch.ones(4, 3)
    torch.testing.assert_close(inference_copy(enc)(x), enc(x))
