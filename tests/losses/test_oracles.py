"""Every objective against what its authors' published training code computes (``oracles.py``):
value and gradient in float64. A documented convention difference is tested as that
difference (layout, normalisation inside the loss, the two MMCR local-term readings)."""

from __future__ import annotations

import oracles
import pytest
import reference
import torch
import torch.nn.functional as F

from manifold_ssl.losses import (
    barlow_twins_loss,
    clamp_loss,
    clip_loss,
    matrix_ssl_loss,
    mmcr_loss,
    simclr_loss,
    vicreg_loss,
)
from manifold_ssl.methods import build_method
from manifold_ssl.models import build_backbone

f64 = torch.float64


def assert_same_value_and_gradient(ours, theirs, *inputs: torch.Tensor) -> None:
    """``ours(*inputs)`` and ``theirs(*inputs)`` agree in value and in every input's gradient."""
    a = [x.detach().clone().requires_grad_(True) for x in inputs]
    b = [x.detach().clone().requires_grad_(True) for x in inputs]
    la, lb = ours(*a), theirs(*b)
    torch.testing.assert_close(la, lb.to(la.dtype), rtol=1e-10, atol=1e-12)
    la.backward()
    lb.backward()
    for x, y in zip(a, b, strict=True):
        gx = torch.zeros_like(x) if x.grad is None else x.grad
        gy = torch.zeros_like(y) if y.grad is None else y.grad
        torch.testing.assert_close(gx, gy, rtol=1e-8, atol=1e-10)


def views_to_image_major(z: torch.Tensor) -> torch.Tensor:
    """(B, K, D) -> (B·K, D) with an image's views in consecutive rows (Yerxa's "(B N) C")."""
    return z.reshape(-1, z.shape[-1])


def views_to_view_major(z: torch.Tensor) -> torch.Tensor:
    """(B, K, D) -> (K·B, D) with view v of every image in one block (CLAMP's [V, B, O])."""
    return z.transpose(0, 1).reshape(-1, z.shape[-1])


# --------------------------------------------------------------------------- MMCR (Yerxa)
@pytest.mark.parametrize("b, k, d, lmbda", [(16, 4, 8, 0.0), (8, 5, 12, 0.0), (10, 3, 6, 0.5)])
def test_mmcr_matches_the_authors_cifar_loss(b, k, d, lmbda, gen):
    z = torch.randn(b, k, d, generator=gen, dtype=f64)
    assert_same_value_and_gradient(
        lambda x: mmcr_loss(x, lmbda),
        lambda x: oracles.mmcr_yerxa(views_to_image_major(x), k, lmbda),
        z,
    )


@pytest.mark.parametrize("b, spread", [(32, 1e-5), (64, 1e-4)])
def test_mmcr_gradient_near_collapse_matches_the_authors_loss(b, spread, gen):
    # views within `spread` of one direction, B = D: the centroids' singular values reach
    # ~1e-8·σ_max, below the √(k·ε₆₄)·σ_max ≈ 1e-7 that a one-level float64 Gram resolves,
    # so only the second level (spectral.py) gets their gradient; a one-level Gram's floor
    # there errs by 0.13–0.25 (relative). The authors' loss takes an SVD of the centroids,
    # whose singular vectors err by ~k·ε₆₄·σ_max/σᵢ (backward-stable SVD): < 1e-6 here.
    u = torch.randn(b, generator=gen, dtype=f64)
    z = u + spread * u.norm() / b**0.5 * torch.randn(b, 2, b, generator=gen, dtype=f64)
    s = torch.linalg.svdvals(F.normalize(z, dim=-1).mean(1))
    eps = torch.finfo(f64).eps
    assert b * eps / 1e-6 < s[-1] / s[0] < (b * eps) ** 0.5  # the regime described above
    ours, theirs = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    value = mmcr_loss(ours)
    expected = oracles.mmcr_yerxa(views_to_image_major(theirs), 2)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)
    value.backward()
    expected.backward()
    assert (ours.grad - theirs.grad).norm() < 1e-6 * theirs.grad.norm()


@pytest.mark.parametrize("lmbda", [0.0, 0.3])
def test_mmcr_momentum_matches_the_authors_imagenet_loss(lmbda, gen):
    z = torch.randn(9, 3, 7, generator=gen, dtype=f64)
    zm = torch.randn(9, 3, 7, generator=gen, dtype=f64)
    assert_same_value_and_gradient(
        lambda x: mmcr_loss(x, lmbda, z_momentum=zm),
        lambda x: oracles.mmcr_momentum_yerxa(
            views_to_image_major(x), views_to_image_major(zm), 3, lmbda
        ),
        z,
    )


def test_mmcr_app_b_local_term_is_the_documented_difference(gen):
    # local_views="all" (App. B) adds λ/B Σ_b (‖[Z_b, Z_b^m]‖* − ‖Z_b‖*) to the authors' loss
    z = torch.randn(9, 3, 7, generator=gen, dtype=f64)
    zm = torch.randn(9, 3, 7, generator=gen, dtype=f64)
    ours = mmcr_loss(z, 0.3, z_momentum=zm, local_views="all")
    theirs = oracles.mmcr_momentum_yerxa(views_to_image_major(z), views_to_image_major(zm), 3, 0.3)
    both = F.normalize(torch.cat([z, zm], dim=1), dim=-1)
    online = F.normalize(z, dim=-1)
    gap = 0.3 * (torch.linalg.svdvals(both).sum() - torch.linalg.svdvals(online).sum()) / 9
    torch.testing.assert_close(ours - theirs, gap, rtol=1e-10, atol=1e-12)
    assert gap > 0.01  # a real difference, not rounding


# --------------------------------------------------------------------------- CLAMP
@pytest.mark.parametrize("r_s", [7.0, 1.0, 0.3])
def test_clamp_matches_the_published_loss(r_s, gen):
    # r_s = 7: the 1.5 cap binds (radii ≈ 1 at random init); 1.0 and 0.3: it does not
    z = torch.randn(12, 4, 10, generator=gen, dtype=f64)
    assert_same_value_and_gradient(
        lambda x: clamp_loss(x, r_s),
        lambda x: oracles.clamp_published(views_to_view_major(x), 4, r_s),
        z,
    )


def test_clamp_matches_the_published_loss_at_its_margins(gen):
    # two coincident sub-manifolds (skipped: closer than 1e-3) and D < m (radius over min(D, m))
    z = torch.randn(8, 6, 4, generator=gen, dtype=f64)
    z[1] = z[0] + 1e-7 * torch.randn(6, 4, generator=gen, dtype=f64)
    assert_same_value_and_gradient(
        lambda x: clamp_loss(x, 3.0),
        lambda x: oracles.clamp_published(views_to_view_major(x), 6, 3.0),
        z,
    )


@pytest.mark.parametrize("b, m, d", [(12, 8, 4), (16, 8, 2)])
@pytest.mark.parametrize("r_s", [0.3, 0.6])
def test_clamp_radius_over_min_d_m_when_d_below_m(b, m, d, r_s, gen):
    # D < m with no pair's reach at the 1.5 cap, so the radius's normalisation by min(D, m)
    # (not m) reaches the loss: over m it changes the loss by 14–160% here
    z = torch.randn(b, m, d, generator=gen, dtype=f64)
    _, terms = clamp_loss(z, r_s, return_terms=True)
    zt = F.normalize(z - z.mean((0, 1)), dim=-1)
    radii = r_s * (zt.var(dim=1).sum(-1) / min(d, m)).sqrt()  # Tr Λ_i / (m − 1) over min(D, m)
    assert 2 * float(radii.max()) < 1.5  # every r_i + r_j below the cap
    assert 0 < terms["n_overlapping_pairs"] < b * (b - 1)  # some pairs overlap, not all
    assert clamp_loss(z, r_s).item() == pytest.approx(
        reference.clamp_official(z.numpy(), r_s), rel=1e-12
    )
    assert_same_value_and_gradient(
        lambda x: clamp_loss(x, r_s),
        lambda x: oracles.clamp_published(views_to_view_major(x), m, r_s),
        z,
    )


# --------------------------------------------------------------------------- Matrix-SSL
@pytest.mark.parametrize("b, d", [(32, 8), (16, 16)])
def test_matrix_ssl_matches_the_official_training_loss(b, d, gen):
    # o: online predictions (the official z), t: EMA-teacher projections (the official p)
    o1, o2, t1, t2 = (torch.randn(b, d, generator=gen, dtype=f64) for _ in range(4))

    def ours(o1, o2, t1, t2):  # as SSLMethod combines the pairings: the teacher first
        t1, t2 = t1.detach(), t2.detach()
        return (matrix_ssl_loss(t2, o1) + matrix_ssl_loss(t1, o2)) / 2

    assert_same_value_and_gradient(ours, oracles.matrix_ssl_official, o1, o2, t1, t2)
    # the roles matter: with the online branch first the alignment cross-entropy is another
    # function of the online predictions, and its gradient points elsewhere
    grads = []
    for order in ((lambda o, t: (t, o)), (lambda o, t: (o, t))):
        o = o1.detach().clone().requires_grad_(True)
        matrix_ssl_loss(*order(o, t2), gamma=1.0, lambd=0.0).backward()
        grads.append(o.grad.flatten())
    assert F.cosine_similarity(*grads, dim=0) < 0.9


def _perturbed_matrix_ssl(gen: torch.Generator):
    """A float64 Matrix-SSL method whose EMA teacher differs from the online network."""
    torch.manual_seed(0)
    method = build_method(
        "matrix_ssl", build_backbone("convnet", 1, width=4), "16-8", predictor="16-8", momentum=0.9
    ).double()
    with torch.no_grad():
        for p in method.target.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=f64))
    return method, torch.randn(12, 2, 1, 8, 8, generator=gen, dtype=f64)


def test_matrix_ssl_step_equals_the_official_step_in_the_builders_roles(gen):
    # MEC.forward: z = predictor(encoder(x)) per view (online), p = teacher(x) (no_grad);
    # main_pretrain.py's mce_loss on (z1, z2, p1, p2). Same modules, same views, float64.
    method, views = _perturbed_matrix_ssl(gen)
    params = [p for p in method.parameters() if p.requires_grad]
    ours, _, _ = method(views)
    g_ours = torch.autograd.grad(ours, params, allow_unused=True)
    z1, z2 = (method.predictor(method.online(views[:, i])) for i in range(2))
    with torch.no_grad():
        p1, p2 = (method.target(views[:, i]) for i in range(2))
    theirs = oracles.matrix_ssl_official(z1, z2, p1, p2)
    g_theirs = torch.autograd.grad(theirs, params, allow_unused=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    flat = [torch.cat([g.flatten() for g in gs if g is not None]) for gs in (g_ours, g_theirs)]
    assert [g is None for g in g_ours] == [g is None for g in g_theirs]
    assert F.cosine_similarity(*flat, dim=0) >= 0.9999
    torch.testing.assert_close(flat[0], flat[1], rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- baselines
def test_simclr_matches_lightly_ntxent(gen):
    z = torch.randn(12, 2, 8, generator=gen, dtype=f64)
    assert_same_value_and_gradient(
        lambda x: simclr_loss(x, 0.5), lambda x: oracles.ntxent_lightly(x[:, 0], x[:, 1], 0.5), z
    )


@pytest.mark.parametrize("lambd", [0.0051, 1 / 128])
def test_barlow_twins_matches_the_official_loss(lambd, gen):
    z1, z2 = (torch.randn(16, 6, generator=gen, dtype=f64) for _ in range(2))
    assert_same_value_and_gradient(
        lambda a, b: barlow_twins_loss(a, b, lambd),
        lambda a, b: oracles.barlow_twins_official(a, b, lambd),
        z1,
        z2,
    )


def test_vicreg_matches_the_official_loss(gen):
    # scaled so that some feature stds fall below 1 and the hinge is active for part of them
    z1 = torch.randn(16, 6, generator=gen, dtype=f64) * torch.linspace(0.3, 2.0, 6, dtype=f64)
    z2 = z1 + 0.5 * torch.randn(16, 6, generator=gen, dtype=f64)
    assert_same_value_and_gradient(vicreg_loss, oracles.vicreg_official, z1, z2)


def test_clip_matches_open_clip_on_normalised_features(gen):
    # convention: ours normalises inside, OpenCLIP receives normalised features from the model
    img, txt = (torch.randn(10, 7, generator=gen, dtype=f64) for _ in range(2))
    assert_same_value_and_gradient(
        lambda a, b: clip_loss(a, b, 20.0),
        lambda a, b: oracles.clip_open_clip(F.normalize(a, dim=-1), F.normalize(b, dim=-1), 20.0),
        img,
        txt,
    )


# --------------------------------------------------------------------------- methods' wiring
def _predict_outputs(name: str, gen: torch.Generator):
    """A small float64 method and its (p1, p2, t1, t2) on one batch of two views."""
    torch.manual_seed(0)
    method = build_method(
        name,
        build_backbone("convnet", 1, width=4),
        "16-8",
        predictor="16-8",
        momentum=0.9 if name != "simsiam" else 0.0,
    ).double()
    views = torch.randn(12, 2, 1, 8, 8, generator=gen, dtype=f64)
    return method, views


@pytest.mark.parametrize(
    "name, oracle",
    [
        ("byol", oracles.byol_deepmind),
        ("simsiam", oracles.simsiam_official),
        ("matrix_ssl", oracles.matrix_ssl_official),
    ],
)
def test_predictive_methods_combine_pairings_as_their_authors(name, oracle, gen):
    method, views = _predict_outputs(name, gen)
    loss, terms, _ = method(views)
    # one forward pass per view, as the authors' code runs them (per-view BatchNorm)
    z = [method.online(views[:, i]) for i in range(2)]
    p = [method.predictor(zi) for zi in z]
    t = [method.target(views[:, i]) for i in range(2)] if method.target is not None else z
    # the oracles take (online1, online2, target1, target2), in their authors' names
    expected = oracle(p[0], p[1], t[0], t[1])
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    assert terms, f"{name} logs no loss terms"
    if name == "matrix_ssl":  # MEC's projector ends in an affine-free BatchNorm
        bn = method.projector[-1]
        assert isinstance(bn, torch.nn.BatchNorm1d) and not bn.affine
        assert set(terms) == {"uniformity", "alignment"}


def test_matrix_ssl_paper_form_puts_the_stop_gradient_branch_first(gen):
    torch.manual_seed(0)
    method = build_method(
        "matrix_ssl",
        build_backbone("convnet", 1, width=4),
        "16-8",
        predictor="16-8",
        momentum=0.9,
        loss_kwargs={"form": "paper", "order": None},
    ).double()
    views = torch.randn(12, 2, 1, 8, 8, generator=gen, dtype=f64)
    loss, _, _ = method(views)
    p = [method.predictor(method.online(views[:, i])) for i in range(2)]
    t = [method.target(views[:, i]) for i in range(2)]
    kw = {"form": "paper", "order": None}
    expected = (matrix_ssl_loss(t[0], p[1], **kw) + matrix_ssl_loss(t[1], p[0], **kw)) / 2
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
