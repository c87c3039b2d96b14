"""Maximum Manifold Capacity Representations (MMCR).

Yerxa, Kuang, Simoncelli & Chung, *Efficient Coding of Natural Images using Maximum Manifold
Capacity Representations*, NeurIPS 2023: Sec. 2.2, Eq. 2, and the pseudocode of App. B.
Multimodal form: Schaeffer et al., *Towards an Improved Understanding and Utilization of MMCR*
(2024), Sec. 7.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import distributed as dist_utils
from .._validation import check_choice, check_positive
from ..geometry._precision import full_precision, to_float64
from ..geometry.polar import DEFAULT_POLAR_STEPS, nuclear_norm_polar
from ..geometry.spectral import nuclear_norm, nuclear_norm_bound, nuclear_norm_of_rows
from ._common import (
    OpenCLIPSignature,
    Terms,
    at_least_float32,
    check_pair,
    check_views,
    renamed,
    result_dtype,
    unit_views_and_centroids,
    zero_gradient,
)
from ._registry import register_loss

__all__ = ["MMCRLoss", "MultimodalMMCRLoss", "mmcr_loss", "multimodal_mmcr_loss"]

_LOCAL_VIEWS = ("online", "all")
#: How the nuclear norms are computed: ``"gram"`` a float64 Gram eigensystem in two levels
#: (:mod:`manifold_ssl.geometry.spectral`), ``"polar"`` Newton–Schulz matrix products in the
#: input's precision (:mod:`manifold_ssl.geometry.polar`).
NUCLEAR_METHODS = ("gram", "polar")


def _check_nuclear(nuclear: str, polar_steps: int) -> tuple[str, int]:
    check_choice(nuclear, "nuclear", NUCLEAR_METHODS)
    if isinstance(polar_steps, bool) or not isinstance(polar_steps, int) or polar_steps < 1:
        raise ValueError(f"polar_steps must be a positive int, got {polar_steps!r}")
    return nuclear, polar_steps


def _global_centroid_nuclear_norm(
    c: torch.Tensor, polar_steps: int | None = None
) -> tuple[torch.Tensor, int]:
    """``‖C‖*`` of the global centroid matrix and the global number of centroids.

    One process: :func:`~manifold_ssl.geometry.nuclear_norm` of ``c`` (B, D), or
    :func:`~manifold_ssl.geometry.polar.nuclear_norm_polar` with ``polar_steps``. Distributed,
    with ``B_global`` centroids: for the Gram path, if ``D <= B_global`` the D×D Grams of the
    two-level spectrum are summed over ranks (D² numbers travel, whatever the batch, and the
    result is the one process's: both levels are Grams of row blocks); otherwise, and always
    for the polar path (whose every step would need a reduction), the centroids themselves are
    gathered (``B_global·D`` numbers).
    """
    n_global = dist_utils.global_count(c.shape[0], c.device)
    if polar_steps is not None:
        return nuclear_norm_polar(dist_utils.gather(c), polar_steps), n_global
    if not dist_utils.is_distributed():
        return nuclear_norm(c), n_global
    if c.shape[1] <= n_global:
        return nuclear_norm_of_rows(c, dist_utils.sum_over_ranks, n_global), n_global
    return nuclear_norm(dist_utils.gather(to_float64(c))), n_global


@renamed(lmbda="lambd")
def mmcr_loss(
    z: torch.Tensor,
    lambd: float = 0.0,
    z_momentum: torch.Tensor | None = None,
    *,
    local_views: str = "online",
    nuclear: str = "gram",
    polar_steps: int = DEFAULT_POLAR_STEPS,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, Terms]:
    """MMCR loss ``−‖C‖* + λ · (1/B) Σ_b ‖Z_b‖*`` (Yerxa Eq. 2 and App. B).

    Args:
        z: raw projector outputs (B, K, D) of K augmented views of B images. Rows are
            L2-normalised here; the centroids ``C`` (B, D) are the means over the K views.
        lambd: weight λ >= 0 of the local nuclear-norm term (App. B, D, O); 0 is the paper's
            default and skips that term's B small spectra.
        z_momentum: optional (B, K', D) outputs of a momentum encoder for the same views
            (App. B): concatenated with ``z`` along K before normalising and averaging. It is
            detached, as the momentum network is not updated by gradient descent. With
            ``K' = K`` (the authors' code always passes the same views through both networks)
            the centroids equal their ``½(mean_online + mean_momentum)``.
        local_views: which views the local term ``‖Z_b‖*`` sees when ``z_momentum`` is given:
            ``"online"`` (default) the K online views, as the authors' training code
            (``mmcr/imagenet/loss_mmcr_momentum.py``) computes it; ``"all"`` the K + K'
            concatenated views, as App. B's pseudocode writes it. The two agree when λ = 0
            (the setting of every published momentum run) or without ``z_momentum``.
        nuclear: ``"gram"`` (default) computes every nuclear norm from a float64 Gram
            eigensystem (exact to ~10⁻¹¹·σ_max, two host synchronisations per step on a GPU in
            ``eigh``'s convergence check); ``"polar"`` by ``polar_steps`` Newton–Schulz steps,
            matrix products only, in float32 for float32/bf16 input (float64 for float64): the
            choice for GPUs with slow float64, exact for singular values above
            ``10⁻⁴·σ_max`` at the default 31 steps when min(B, D) <= 512, weaker directions
            counted less (:mod:`manifold_ssl.geometry.polar` gives the limits). The
            centroids are formed in float64 either way.
        polar_steps: Newton–Schulz steps of the ``"polar"`` path; each adds a factor 1.5 to
            the range of singular values it resolves.
        return_terms: also return a dict of named terms for logging.

    Returns:
        The scalar loss, float64 for float64 ``z`` and float32 otherwise (normalisation,
        centroids, Gram matrices and spectra in float64 with autocast off: near collapse the
        views differ from their common direction by 10⁻⁴ and less, where float32's rounding
        of the unit vectors, ~10⁻⁷, would be a 10⁻³ error in the directions that carry the
        gradient; see :mod:`manifold_ssl.geometry._precision`),
        and with ``return_terms`` a dict with ``centroid_nuclear_norm``, ``percent_error``
        (Schaeffer Eq. 4, as a fraction) and, when λ > 0, ``local_nuclear_norm``.

    Distributed: the loss of the global batch on every rank (see
    :mod:`manifold_ssl.distributed`); ``‖C‖*`` reduces the D×D Gram when D <= global B and
    gathers the centroids otherwise.

    Example:
        >>> z = torch.randn(256, 4, 128, requires_grad=True)
        >>> loss = mmcr_loss(z)
        >>> loss.backward()
    """
    lambd = check_positive(lambd, "lambd", allow_zero=True)
    check_choice(local_views, "local_views", _LOCAL_VIEWS)
    _check_nuclear(nuclear, polar_steps)
    n_online = z.shape[1] if isinstance(z, torch.Tensor) and z.ndim == 3 else 0
    z = check_views(z, "z", min_views=1 if z_momentum is not None else 2, finite=False)
    if z_momentum is not None:
        z_momentum = check_views(z_momentum, "z_momentum", min_views=1)
        if z_momentum.shape[0] != z.shape[0] or z_momentum.shape[2] != z.shape[2]:
            raise ValueError(
                f"z_momentum must be (B, K', D) with the B and D of z {tuple(z.shape)}, got "
                f"{tuple(z_momentum.shape)}"
            )
        z = torch.cat([z, z_momentum.detach().to(z.dtype)], dim=1)

    with full_precision(z):
        # (B, K, D) views on the unit sphere (λ > 0) and their (B, D) float64 centroids; bf16
        # views in float32 first, so that both paths' gradients add up before one rounding
        zn, centroids = unit_views_and_centroids(at_least_float32(z), views=lambd > 0)
        if nuclear == "polar":  # matrix products in the input's precision (float32 for bf16)
            work = result_dtype(z)
            centroids = centroids.to(work)
            zn = None if zn is None else zn.to(work)
        steps = polar_steps if nuclear == "polar" else None
        nuc, n_global = _global_centroid_nuclear_norm(centroids, steps)
        loss = -nuc
        terms: Terms = {"centroid_nuclear_norm": nuc.detach()}
        if lambd > 0:
            assert zn is not None
            views = zn[:, :n_online] if local_views == "online" else zn  # (B, K or K+K', D)
            # (B,) nuclear norms of the view matrices
            local = nuclear_norm(views) if steps is None else nuclear_norm_polar(views, steps)
            local_mean = dist_utils.global_mean(local.sum(), z.shape[0])
            loss = loss + lambd * local_mean
            terms["local_nuclear_norm"] = local_mean.detach()
        bound = nuclear_norm_bound(n_global, z.shape[2])
        terms["percent_error"] = (bound - nuc.detach()) / bound
    out = loss.to(result_dtype(z))
    return (out, terms) if return_terms else out


@register_loss("mmcr")
class MMCRLoss(nn.Module):
    """MMCR objective (Yerxa et al. 2023, Eq. 2). See :func:`mmcr_loss`.

    ``forward(z, z_momentum=None)`` with ``z`` (B, K, D).

    Example:
        >>> loss_fn = MMCRLoss()
        >>> z = torch.randn(8, 4, 16, requires_grad=True)  # (B, K, D)
        >>> loss = loss_fn(z)
        >>> loss.shape, bool(torch.isfinite(loss))
        (torch.Size([]), True)
        >>> loss.backward()
    """

    inputs = "views"

    @renamed(lmbda="lambd")
    def __init__(
        self,
        lambd: float = 0.0,
        local_views: str = "online",
        nuclear: str = "gram",
        polar_steps: int = DEFAULT_POLAR_STEPS,
    ) -> None:
        super().__init__()
        self.lambd = check_positive(lambd, "lambd", allow_zero=True)
        self.local_views = check_choice(local_views, "local_views", _LOCAL_VIEWS)
        self.nuclear, self.polar_steps = _check_nuclear(nuclear, polar_steps)

    def forward(
        self,
        z: torch.Tensor,
        z_momentum: torch.Tensor | None = None,
        *,
        return_terms: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, Terms]:
        return mmcr_loss(
            z,
            self.lambd,
            z_momentum,
            local_views=self.local_views,
            nuclear=self.nuclear,
            polar_steps=self.polar_steps,
            return_terms=return_terms,
        )

    def extra_repr(self) -> str:
        return f"lambd={self.lambd}, local_views={self.local_views!r}, nuclear={self.nuclear!r}"


@renamed(lmbda="lambd")
def multimodal_mmcr_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    lambd: float = 0.0,
    *,
    nuclear: str = "gram",
    polar_steps: int = DEFAULT_POLAR_STEPS,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, Terms]:
    """Multimodal MMCR (Schaeffer et al. 2024, Sec. 7): an image and its caption are two views.

    ``image_features`` and ``text_features`` are (B, D) outputs of the two towers; the loss is
    :func:`mmcr_loss` of the (B, 2, D) stack (``nuclear`` and ``polar_steps`` as there), so each
    centroid is the mean of the normalised image and text embeddings of one pair.
    """
    image_features, text_features = check_pair(
        image_features, text_features, ("image_features", "text_features")
    )
    z = torch.stack([image_features, text_features], dim=1)  # (B, 2, D)
    return mmcr_loss(z, lambd, nuclear=nuclear, polar_steps=polar_steps, return_terms=return_terms)


@register_loss("multimodal_mmcr")
class MultimodalMMCRLoss(OpenCLIPSignature):
    """Drop-in replacement for OpenCLIP's ``ClipLoss`` (Schaeffer et al. 2024, Sec. 7).

    ``forward(image_features, text_features, logit_scale=None, logit_bias=None,
    output_dict=False)`` takes the arguments an OpenCLIP training loop passes
    (``loss(**model_out, output_dict=True)``) and returns what it sums. MMCR has no temperature:
    ``logit_scale`` (and a SigLIP model's ``logit_bias``) enter the loss times zero, so that they
    receive a zero gradient rather than none, and DDP without ``find_unused_parameters`` (as
    OpenCLIP runs it) finds every parameter used.

    Example:
        >>> loss_fn = MultimodalMMCRLoss()
        >>> image, text = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16)
        >>> loss = loss_fn(image, text)
        >>> loss.shape, bool(torch.isfinite(loss))
        (torch.Size([]), True)
        >>> loss.backward()
    """

    inputs = "pair"

    @renamed(lmbda="lambd")
    def __init__(
        self, lambd: float = 0.0, nuclear: str = "gram", polar_steps: int = DEFAULT_POLAR_STEPS
    ) -> None:
        super().__init__()
        self.lambd = check_positive(lambd, "lambd", allow_zero=True)
        self.nuclear, self.polar_steps = _check_nuclear(nuclear, polar_steps)

    key = "mmcr_loss"

    def objective(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float | None,
        logit_bias: torch.Tensor | None,
        want_terms: bool,
    ) -> tuple[torch.Tensor, Terms]:
        out = multimodal_mmcr_loss(
            image_features,
            text_features,
            self.lambd,
            nuclear=self.nuclear,
            polar_steps=self.polar_steps,
            return_terms=want_terms,
        )
        loss, terms = out if isinstance(out, tuple) else (out, {})
        return loss + zero_gradient(logit_scale, logit_bias), terms
