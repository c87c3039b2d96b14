"""Spectra, manifold statistics, neural predictivity, gradient coherence, layer features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from manifold_ssl.evaluation.coherence import gradient_coherence
from manifold_ssl.evaluation.features import class_manifolds, layer_features
from manifold_ssl.evaluation.predictivity import neural_predictivity
from manifold_ssl.geometry.manifold_stats import (
    centroid_norm_identity,
    manifold_similarities,
    packing_statistics,
    split_by_class,
)
from manifold_ssl.geometry.spectral import (
    class_effective_ranks,
    covariance_spectrum,
    powerlaw_decay,
    rankme,
)


def test_powerlaw_fit_recovers_a_known_exponent():
    rng = np.random.default_rng(0)
    n, d, alpha = 4000, 200, 1.3
    scales = np.arange(1, d + 1) ** (-alpha / 2)  # variances n^(-alpha)
    x = rng.standard_normal((n, d)) * scales
    fit = powerlaw_decay(covariance_spectrum(x), fit_range=(5, 60))
    assert fit.alpha == pytest.approx(alpha, rel=0.05) and fit.r_squared > 0.98
    exact = powerlaw_decay(np.arange(1, 101, dtype=float) ** -2.0)
    assert exact.alpha == pytest.approx(2.0) and exact.r_squared == pytest.approx(1.0)
    with pytest.raises(ValueError, match="fit_range"):
        powerlaw_decay(np.ones(10), fit_range=(5, 40))


def test_rankme_and_class_effective_ranks():
    rng = np.random.default_rng(1)
    assert rankme(rng.standard_normal((500, 1)) @ rng.standard_normal((1, 8))) == pytest.approx(1.0)
    assert rankme(np.linalg.qr(rng.standard_normal((50, 6)))[0]) == pytest.approx(6.0)
    # 3 classes whose means span 2 dims, isotropic within-class noise in 5 dims
    means = np.array([[5, 0, 0, 0, 0], [0, 5, 0, 0, 0], [-5, -5, 0, 0, 0]], dtype=float)
    y = np.repeat(np.arange(3), 400)
    x = means[y] + rng.standard_normal((1200, 5))
    r = class_effective_ranks(x, y)
    assert r["intra_class_erank"] == pytest.approx(5.0, rel=0.05)
    assert 1.5 < r["inter_class_erank"] <= 2.0 + 1e-6


def test_similarities_separate_same_and_different_class_pairs():
    rng = np.random.default_rng(2)
    N, m = 30, 12
    class_centres = rng.standard_normal((2, N)) * 3
    class_axes = [np.linalg.qr(rng.standard_normal((N, 3)))[0] for _ in range(2)]
    X, labels = [], []
    for p in range(10):
        c = p % 2
        centre = class_centres[c] + 0.3 * rng.standard_normal(N)
        X.append(
            centre
            + rng.standard_normal((m, 3)) @ class_axes[c].T
            + 0.05 * rng.standard_normal((m, N))
        )
        labels.append(c)
    stats = manifold_similarities(np.stack(X), n_components=3)
    assert len(stats["centroid_cosine"]) == 45
    split = split_by_class(stats, labels)
    for key in ("centroid_cosine", "subspace_cosine", "shared_variance"):
        assert split["same"][key].mean() > split["different"][key].mean() + 0.2, key
    assert np.all((stats["shared_variance"] >= 0) & (stats["shared_variance"] <= 1 + 1e-12))


def test_centroid_norm_identity_of_eq_3():
    z = torch.randn(7, 5, 9)
    lhs, rhs = centroid_norm_identity(z)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)


def test_packing_statistics_count_overlaps():
    far = torch.eye(4, 8, dtype=torch.float64).unsqueeze(1) + 1e-3 * torch.randn(
        4, 3, 8, dtype=torch.float64
    )
    stats = packing_statistics(far)
    assert (stats["neighbours"] == 0).all() and (stats["radius"] < 0.05).all()
    close = torch.randn(1, 1, 8).expand(6, 3, 8) + torch.randn(6, 3, 8)
    assert (packing_statistics(close, r_s=7.0)["neighbours"] > 0).any()


def test_neural_predictivity_of_a_linear_population():
    rng = np.random.default_rng(3)
    feats = rng.standard_normal((300, 20))
    w = rng.standard_normal((20, 15))
    good = neural_predictivity(feats, feats @ w + 0.5 * rng.standard_normal((300, 15)), n_splits=5)
    noise = neural_predictivity(
        rng.standard_normal((300, 20)), rng.standard_normal((300, 15)), n_splits=5
    )
    assert good["score"] > 0.9 and abs(noise["score"]) < 0.2 and good["sem"] >= 0
    assert len(good["per_neuron"]) == 15
    with pytest.raises(ValueError, match="share S"):
        neural_predictivity(feats, feats[:10])


def test_gradient_coherence_within_exceeds_across_for_class_structured_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
    centres = torch.randn(2, 6) * 3
    batches = [(c, centres[c] + 0.1 * torch.randn(16, 6)) for c in (0, 0, 0, 1, 1, 1)]
    out = gradient_coherence(model, lambda b: model(b).square().mean(), batches, layers=["0", "2"])
    assert set(out) == {"all", "0", "2"}
    for v in out.values():
        assert v["within"] > v["across"] and -1 <= v["across"] <= 1
    with pytest.raises(ValueError, match="no parameter"):
        gradient_coherence(model, lambda b: model(b).sum(), batches, layers=["conv"])


def test_layer_features_and_class_manifolds():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    feats = layer_features(model, torch.randn(10, 1, 8, 8), ["0", "3"], batch_size=4)
    assert feats["0"].shape == (10, 4 * 6 * 6) and feats["3"].shape == (10, 5)
    with pytest.raises(ValueError, match="no submodule"):
        layer_features(model, torch.randn(2, 1, 8, 8), ["fc"])
    labels = torch.tensor([0] * 6 + [1] * 4)
    X, kept = class_manifolds(feats["3"], labels, per_class=4)
    assert X.shape == (2, 4, 5) and kept.tolist() == [0, 1]
