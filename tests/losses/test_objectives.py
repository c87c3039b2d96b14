"""Per-objective properties and non-default settings against the float64 references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference
import torch
import torch.nn.functional as F

from manifold_ssl.geometry import effective_rank, nuclear_norm_bound
from manifold_ssl.losses import (
    NO_OVERLAP_LOSS,
    build_loss,
    byol_loss,
    clamp_loss,
    matrix_ssl_loss,
    mec_loss,
    mmcr_loss,
    multimodal_mmcr_loss,
    simclr_loss,
    simsiam_loss,
)

f64 = torch.float64


def random_rotation(d: int, gen: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=f64))[0]


# --------------------------------------------------------------------------- MMCR
def test_mmcr_local_term_and_momentum_views_match_reference(gen):
    # App. B pseudocode: the local term over all K + K' views (local_views="all")
    z = torch.randn(6, 3, 4, generator=gen, dtype=f64, requires_grad=True)
    zm = torch.randn(6, 2, 4, generator=gen, dtype=f64)
    loss = mmcr_loss(z, lambd=0.3, z_momentum=zm, local_views="all")
    expected = reference.mmcr(z.detach().numpy(), 0.3, zm.numpy())
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    num = reference.numerical_grad(
        lambda a: reference.mmcr(a, 0.3, zm.numpy()), [z.detach().numpy().copy()], 0
    )
    np.testing.assert_allclose(z.grad.numpy(), num, rtol=1e-6, atol=1e-8)
    # the default (the authors' code) takes the local term over the online views only
    online = mmcr_loss(z.detach(), lambd=0.3, z_momentum=zm)
    zn = F.normalize(z.detach(), dim=-1)
    zn_all = F.normalize(torch.cat([z.detach(), zm], dim=1), dim=-1)
    gap = 0.3 * (torch.linalg.svdvals(zn_all).sum() - torch.linalg.svdvals(zn).sum()) / 6
    assert loss.item() - online.item() == pytest.approx(gap.item(), rel=1e-10)
    with pytest.raises(ValueError, match="local_views"):
        mmcr_loss(z, lambd=0.3, z_momentum=zm, local_views="momentum")


@pytest.mark.parametrize("lmbda", [0.0, 0.3])
def test_mmcr_polar_path_matches_the_reference_and_the_gram_path(lmbda, gen):
    # the matmul-only nuclear norms (Newton–Schulz) on the App. B objective, momentum included
    z = torch.randn(9, 3, 6, generator=gen, dtype=f64, requires_grad=True)
    zm = torch.randn(9, 3, 6, generator=gen, dtype=f64)
    loss = mmcr_loss(z, lmbda, zm, local_views="all", nuclear="polar", polar_steps=80)
    expected = reference.mmcr(z.detach().numpy(), lmbda, zm.numpy())
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    num = reference.numerical_grad(
        lambda a: reference.mmcr(a, lmbda, zm.numpy()), [z.detach().numpy().copy()], 0
    )
    np.testing.assert_allclose(z.grad.numpy(), num, rtol=1e-6, atol=1e-8)
    x = z.detach().requires_grad_(True)
    mmcr_loss(x, lmbda, zm, local_views="all").backward()
    torch.testing.assert_close(z.grad, x.grad, rtol=1e-10, atol=1e-12)


def test_mmcr_polar_path_descends_and_rejects_bad_settings(gen):
    z = torch.nn.Parameter(torch.randn(32, 4, 16, generator=gen))
    loss_fn = build_loss("mmcr", nuclear="polar")
    opt = torch.optim.Adam([z], lr=0.05)
    first = loss_fn(z).item()
    for _ in range(30):
        opt.zero_grad()
        loss_fn(z).backward()
        opt.step()
    assert loss_fn(z).item() < first - 0.1 * abs(first)
    assert "nuclear='polar'" in repr(loss_fn)
    with pytest.raises(ValueError, match="nuclear"):
        mmcr_loss(z, nuclear="svd")
    with pytest.raises(ValueError, match="polar_steps"):
        build_loss("multimodal_mmcr", nuclear="polar", polar_steps=0)


def test_mmcr_momentum_views_are_detached_and_count_as_views(gen):
    z = torch.randn(5, 1, 8, generator=gen, requires_grad=True)  # one online view is enough
    zm = torch.randn(5, 1, 8, generator=gen, requires_grad=True)
    mmcr_loss(z, z_momentum=zm).backward()
    assert zm.grad is None and torch.isfinite(z.grad).all()
    with pytest.raises(ValueError, match="z_momentum"):
        mmcr_loss(z, z_momentum=zm[:, :, :4])
    with pytest.raises(ValueError, match="K >= 2"):
        mmcr_loss(z)


@pytest.mark.parametrize("b, k, d", [(16, 2, 64), (64, 4, 16), (32, 8, 32), (300, 2, 5)])
def test_mmcr_nuclear_norm_within_proposition_3_3_bounds(b, k, d, gen):
    z = torch.randn(b, k, d, generator=gen)
    loss, terms = mmcr_loss(z, return_terms=True)
    bound = nuclear_norm_bound(b, d)
    assert 0 <= -loss.item() <= bound * (1 + 1e-6)
    assert terms["percent_error"].item() == pytest.approx(1 + loss.item() / bound, rel=1e-5)
    assert 0 <= terms["percent_error"].item() <= 1


@pytest.mark.parametrize("b, d", [(8, 8), (5, 12), (12, 4)])
def test_mmcr_minimum_is_reached_by_orthogonal_unit_centroids(b, d, gen):
    # identical views on an orthonormal set (B <= D) or a tight frame (B = 3D): ‖C‖* = bound
    rows = torch.eye(max(b, d))[:d].T[:b] if b <= d else torch.eye(d).repeat(b // d, 1)
    rows = rows.double() @ random_rotation(d, gen)
    z = rows.unsqueeze(1).repeat(1, 3, 1)
    best = mmcr_loss(z).item()
    assert best == pytest.approx(-nuclear_norm_bound(b, d), rel=1e-10)
    for _ in range(5):  # any other configuration of unit-norm views is worse
        assert mmcr_loss(torch.randn(b, 3, d, generator=gen, dtype=f64)).item() > best


def test_mmcr_invariances(gen):
    z = torch.randn(10, 4, 6, generator=gen, dtype=f64)
    base = mmcr_loss(z, lambd=0.2).item()
    rotated = z @ random_rotation(6, gen)
    scaled = z * torch.rand(10, 4, 1, generator=gen, dtype=f64).add(0.1)
    permuted = z[torch.randperm(10, generator=gen)][:, torch.randperm(4, generator=gen)]
    for other in (rotated, scaled, permuted):
        assert mmcr_loss(other, lambd=0.2).item() == pytest.approx(base, rel=1e-10)


def test_mmcr_percent_error_is_zero_only_at_the_bound(gen):
    _, perfect = mmcr_loss(torch.eye(6).unsqueeze(1).repeat(1, 2, 1), return_terms=True)
    assert perfect["percent_error"].item() == pytest.approx(0.0, abs=1e-12)
    _, random = mmcr_loss(torch.randn(6, 2, 6, generator=gen), return_terms=True)
    assert random["percent_error"].item() > 0.01


def test_multimodal_mmcr_is_mmcr_of_the_two_modalities(gen):
    img, txt = torch.randn(9, 7, generator=gen), torch.randn(9, 7, generator=gen)
    torch.testing.assert_close(
        multimodal_mmcr_loss(img, txt), mmcr_loss(torch.stack([img, txt], dim=1))
    )
    from manifold_ssl.losses import MultimodalMMCRLoss

    out = MultimodalMMCRLoss()(img, txt, logit_scale=torch.tensor(14.0), output_dict=True)
    assert set(out) == {"mmcr_loss"}


def test_clip_loss_takes_open_clip_arguments(gen):
    from manifold_ssl.losses import CLIPLoss, clip_loss

    img, txt = torch.randn(9, 7, generator=gen), torch.randn(9, 7, generator=gen)
    scale = torch.tensor(14.0)
    out = CLIPLoss()(img, txt, logit_scale=scale, output_dict=True, logit_bias=None)
    assert set(out) == {"contrastive_loss"}
    torch.testing.assert_close(out["contrastive_loss"], clip_loss(img, txt, scale))
    torch.testing.assert_close(CLIPLoss(5.0)(img, txt), clip_loss(img, txt, 5.0))


# --------------------------------------------------------------------------- CLAMP
def test_clamp_paper_form_unbiased_covariance_matches_reference(gen):
    z = torch.randn(6, 4, 5, generator=gen, dtype=f64, requires_grad=True)
    loss = clamp_loss(z, r_s=3.0, covariance="unbiased", form="paper")
    assert loss.item() == pytest.approx(reference.clamp(z.detach().numpy(), 3.0, ddof=1), rel=1e-12)
    paper = clamp_loss(z, r_s=3.0, form="paper").item()
    assert paper < loss.item()  # 1/(m−1) gives larger radii, hence more overlap
    with pytest.raises(ValueError, match="covariance"):
        clamp_loss(z, covariance="unbiased")  # the official form fixes 1/(m − 1)


def test_clamp_without_overlap_returns_documented_floor_with_zero_gradient():
    # four tight sub-manifolds on orthogonal axes: far apart compared with their radii
    centres = torch.eye(4, 8, dtype=f64)
    z = (centres.unsqueeze(1) + 1e-4 * torch.randn(4, 3, 8, dtype=f64)).requires_grad_(True)
    loss, terms = clamp_loss(z, return_terms=True, form="paper")
    assert loss.item() == pytest.approx(NO_OVERLAP_LOSS) and NO_OVERLAP_LOSS == pytest.approx(
        -87.3365, abs=1e-3
    )
    assert terms["n_overlapping_pairs"].item() == 0
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))
    # the official form: log(0 + 1e-6), also with a zero gradient
    z.grad = None
    loss, terms = clamp_loss(z, return_terms=True)
    assert loss.item() == pytest.approx(math.log(1e-6), rel=1e-12)
    assert terms["n_overlapping_pairs"].item() == 0
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


@pytest.mark.parametrize("form", ["official", "paper"])
def test_clamp_invariant_to_rotation_translation_and_scale(form, gen):
    z = torch.randn(8, 4, 6, generator=gen, dtype=f64)
    base = clamp_loss(z, form=form).item()
    shift = torch.randn(6, generator=gen, dtype=f64)
    for other in (z @ random_rotation(6, gen), z + shift, 3.7 * z):
        assert clamp_loss(other, form=form).item() == pytest.approx(base, rel=1e-10)


@pytest.mark.parametrize("form", ["official", "paper"])
def test_clamp_overlap_grows_with_r_s(form, gen):
    z = torch.randn(10, 4, 6, generator=gen, dtype=f64)
    values = [clamp_loss(z, r_s=r, form=form).item() for r in (0.5, 1.0, 2.0, 4.0, 8.0)]
    assert values == sorted(values)


def test_clamp_official_cap_bounds_the_reach_at_initialisation(gen):
    # r_s = 7 at initialisation: radii near 1, so r_i + r_j > 1.5 and the cap decides the reach
    z = torch.randn(16, 4, 32, generator=gen, dtype=f64)
    _, terms = clamp_loss(z, r_s=7.0, return_terms=True)
    assert 2 * terms["mean_radius"].item() > 1.5
    # every centroid pair is within 1.5 of each other here, so all 16·15 ordered pairs overlap
    assert terms["n_overlapping_pairs"].item() == 16 * 15
    lo, hi = clamp_loss(z, r_s=7.0).item(), clamp_loss(z, r_s=70.0).item()
    assert lo == pytest.approx(hi, rel=1e-12)  # beyond the cap r_s changes nothing


# --------------------------------------------------------------------------- Matrix-SSL
@pytest.mark.parametrize("order", [None, 2, 3, 5])
def test_matrix_ssl_paper_form_orders_and_hyperparameters_match_reference(order, gen):
    z1 = torch.randn(9, 4, generator=gen, dtype=f64, requires_grad=True)
    z2 = (z1.detach() + 0.3 * torch.randn(9, 4, generator=gen, dtype=f64)).requires_grad_(True)
    kw = {"gamma": 0.7, "lambd": 0.2, "order": order}
    loss = matrix_ssl_loss(z1, z2, form="paper", **kw)
    a, b = z1.detach().numpy().copy(), z2.detach().numpy().copy()
    assert loss.item() == pytest.approx(reference.matrix_ssl(a, b, **kw), rel=1e-10)
    loss.backward()
    for i, t in enumerate((z1, z2)):
        num = reference.numerical_grad(lambda x, y: reference.matrix_ssl(x, y, **kw), [a, b], i)
        np.testing.assert_allclose(t.grad.numpy(), num, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("order", [None, 2, 6])
def test_matrix_ssl_official_form_matches_reference(order, gen):
    z1 = torch.randn(9, 4, generator=gen, dtype=f64, requires_grad=True)
    z2 = (z1.detach() + 0.3 * torch.randn(9, 4, generator=gen, dtype=f64)).requires_grad_(True)
    kw = {"gamma": 0.7, "lambd": 0.3, "mu": 0.6, "order": order}
    loss = matrix_ssl_loss(z1, z2, **kw)
    a, b = z1.detach().numpy().copy(), z2.detach().numpy().copy()
    assert loss.item() == pytest.approx(reference.matrix_ssl_official(a, b, **kw), rel=1e-10)
    loss.backward()
    for i, t in enumerate((z1, z2)):
        num = reference.numerical_grad(
            lambda x, y: reference.matrix_ssl_official(x, y, **kw), [a, b], i
        )
        np.testing.assert_allclose(t.grad.numpy(), num, rtol=1e-5, atol=1e-8)


def test_matrix_ssl_paper_alignment_vanishes_for_identical_branches(gen):
    z = torch.randn(16, 5, generator=gen, dtype=f64)
    _, terms = matrix_ssl_loss(z, z.clone(), form="paper", return_terms=True)
    assert terms["alignment"].item() == pytest.approx(0.0, abs=1e-12)
    other = torch.randn(16, 5, generator=gen, dtype=f64)
    _, terms = matrix_ssl_loss(z, other, form="paper", return_terms=True)
    assert terms["alignment"].item() > 0


def _free_pair(b: int, d: int) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(b, d, generator=gen)
    return (
        torch.nn.Parameter(base + 0.7 * torch.randn(b, d, generator=gen)),
        torch.nn.Parameter(base + 0.7 * torch.randn(b, d, generator=gen)),
    )


def _optimise_pair(b: int, d: int, steps: int = 300, **kw) -> tuple[float, float]:
    """Mean positive-pair cosine before and after Adam on both copies of one embedding set."""
    z1, z2 = _free_pair(b, d)
    opt = torch.optim.Adam([z1, z2], lr=0.02)
    before = F.cosine_similarity(z1, z2).mean().item()
    for _ in range(steps):
        loss = (matrix_ssl_loss(z1, z2, **kw) + matrix_ssl_loss(z2, z1, **kw)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, F.cosine_similarity(z1, z2).mean().item()


@pytest.mark.parametrize("b, d", [(256, 16), (512, 128)])
def test_matrix_ssl_default_aligns_positive_pairs(b, d):
    before, after = _optimise_pair(b, d)  # the recipe's settings: official, λ = μ = 0.5, order 4
    assert before < 0.7 and after > 0.99


def test_matrix_ssl_paper_form_optima_as_documented():
    # exact log, λ = 0 < 1/d: aligned; λ = 1 > 1/d or an order-4 Taylor log with d > 4:
    # anti-aligned (the docstring's derivation)
    assert _optimise_pair(256, 16, form="paper", lambd=0.0, order=None)[1] > 0.95
    assert _optimise_pair(256, 16, form="paper", lambd=1.0, order=None)[1] < -0.95
    assert _optimise_pair(256, 16, form="paper", lambd=0.0, order=4)[1] < -0.95


def _against_fixed_teacher(loss_of, b: int = 256, d: int = 64, steps: int = 300):
    """Free online embeddings ``o`` trained by Adam against a fixed teacher ``t`` (B, d) that
    starts at positive-pair cosine 0.82; returns cosine and effective rank before and after.

    The teacher is never updated, as in a step of a predictive method (stop-gradient or EMA
    branch): a loss whose roles are swapped cannot hide behind the other branch moving.
    """
    gen = torch.Generator().manual_seed(0)
    t = torch.randn(b, d, generator=gen, dtype=f64)
    o = torch.nn.Parameter(t + 0.7 * torch.randn(b, d, generator=gen, dtype=f64))
    opt = torch.optim.Adam([o], lr=0.02)
    before = F.cosine_similarity(o, t).mean().item(), effective_rank(o.detach()).item()
    for _ in range(steps):
        loss = loss_of(o, t)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, (F.cosine_similarity(o, t).mean().item(), effective_rank(o.detach()).item())


@pytest.mark.parametrize(
    "name, loss_of",
    [
        ("matrix_ssl", lambda o, t: matrix_ssl_loss(t, o)),  # the teacher first (the builder)
        ("byol", lambda o, t: byol_loss(o, t)),
        ("simsiam", lambda o, t: simsiam_loss(o, t)),
        ("mmcr_momentum", lambda o, t: mmcr_loss(o[:, None], z_momentum=t[:, None])),
    ],
)
def test_predictive_objectives_align_with_a_fixed_teacher_and_keep_the_rank(name, loss_of):
    (cos0, rank0), (cos1, rank1) = _against_fixed_teacher(loss_of)
    assert cos0 < 0.85 and cos1 > 0.95, (name, cos0, cos1)
    assert rank1 >= 0.98 * rank0, (name, rank0, rank1)
    if name == "matrix_ssl":  # the issue's bar for the authors' roles
        assert cos1 > 0.99


def test_matrix_ssl_swapped_roles_collapse_against_a_fixed_teacher():
    # the online branch outside the log: its covariance is drawn into the teacher's top
    # eigen-directions; the alignment term alone (λ = 0) collapses the rank
    _, (cos, rank) = _against_fixed_teacher(lambda o, t: matrix_ssl_loss(o, t))
    assert cos < 0.9 and rank < 58
    _, (_, rank_align) = _against_fixed_teacher(lambda o, t: matrix_ssl_loss(o, t, lambd=0.0))
    assert rank_align < 5


def test_matrix_ssl_rejects_mixed_forms():
    z = torch.randn(8, 4)
    with pytest.raises(ValueError, match="mu"):
        matrix_ssl_loss(z, z, form="paper", mu=0.5)
    with pytest.raises(ValueError, match="form"):
        matrix_ssl_loss(z, z, form="literal")


def test_matrix_ssl_needs_two_samples():
    with pytest.raises(ValueError, match="B >= 2"):
        matrix_ssl_loss(torch.randn(1, 4), torch.randn(1, 4))


# --------------------------------------------------------------------------- SimCLR, MEC
def test_simclr_two_views_is_the_standard_nt_xent(gen):
    z = torch.randn(12, 2, 8, generator=gen, dtype=f64)
    a, b = F.normalize(z[:, 0], dim=1), F.normalize(z[:, 1], dim=1)
    reps = torch.cat([a, b])  # (2B, D), the usual layout
    logits = reps @ reps.T / 0.2
    logits.fill_diagonal_(-math.inf)
    labels = torch.cat([torch.arange(12, 24), torch.arange(12)])
    torch.testing.assert_close(simclr_loss(z, temperature=0.2), F.cross_entropy(logits, labels))


def test_simclr_many_views_matches_reference(gen):
    z = torch.randn(5, 4, 3, generator=gen, dtype=f64)
    assert simclr_loss(z, 0.3).item() == pytest.approx(reference.simclr(z.numpy(), 0.3), rel=1e-12)


def test_mec_exact_log_determinant_matches_reference(gen):
    z1, z2 = (
        torch.randn(10, 4, generator=gen, dtype=f64),
        torch.randn(10, 4, generator=gen, dtype=f64),
    )
    value = mec_loss(z1, z2, eps=2.0, order=None).item()
    assert value == pytest.approx(reference.mec(z1.numpy(), z2.numpy(), 2.0, None), rel=1e-12)
    # the Taylor series converges to it when ‖λ Z1ᵀZ2‖ < 1
    taylor = mec_loss(z1, z2, eps=2.0, order=30).item()
    assert taylor == pytest.approx(value, rel=1e-6)


def test_fused_normalisation_matches_f_normalize_including_zero_rows(gen):
    from manifold_ssl.losses._common import unit_views_and_centroids

    z = torch.randn(5, 3, 4, generator=gen, dtype=f64)
    z[1, 2] = 0.0  # a zero view: F.normalize's clamped branch
    weights = torch.randn(5, 3, 4, generator=gen, dtype=f64)
    a = z.clone().requires_grad_(True)
    zn, c = unit_views_and_centroids(a)
    ((zn * weights).sum() + (c**2).sum()).backward()
    b = z.clone().requires_grad_(True)
    ref = F.normalize(b, dim=-1)
    ((ref * weights).sum() + (ref.mean(1) ** 2).sum()).backward()
    torch.testing.assert_close(zn, ref.detach())
    torch.testing.assert_close(a.grad, b.grad)
    # float32 views: float64 centroids of the same numbers, the gradient to float32 precision
    z32 = z.float().requires_grad_(True)
    _, c32 = unit_views_and_centroids(z32, views=False)
    assert c32.dtype == f64
    torch.testing.assert_close(c32, F.normalize(z.float().double(), dim=-1).mean(1))
    (c32**2).sum().backward()
    z64 = z.float().double().requires_grad_(True)
    (F.normalize(z64, dim=-1).mean(1) ** 2).sum().backward()
    torch.testing.assert_close(z32.grad.double(), z64.grad, rtol=1e-6, atol=1e-7)


def test_mmcr_reports_overflowing_norms_separately_from_nan(gen):
    # float32 input is normalised in float64, where 1e30's squared norm is finite: scale-free
    z = torch.randn(4, 2, 3, generator=gen)
    torch.testing.assert_close(mmcr_loss(z * 1e30), mmcr_loss(z))
    huge = torch.full((4, 2, 3), 1e200, dtype=f64)  # finite, but its squared norm overflows
    with pytest.raises(ValueError, match="too large"):
        mmcr_loss(huge)
