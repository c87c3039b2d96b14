"""Matrix-SSL: matrix information-theoretic uniformity and alignment.

*Matrix Information Theory for Self-Supervised Learning* (Zhang, Tan, Yang, Yuan et al.):
Matrix-KL-Uniformity (Eq. 20), Matrix-KL-Alignment (Eq. 21), Matrix-SSL (Eq. 22), the
Taylor-expanded matrix logarithm (App. F.1).

Two forms, because the paper's equations and the authors' training code differ:

``form="official"`` (the default: what trained the paper's numbers) re-implements the loss of
yifanzhang-pro/Matrix-SSL at 422f289 and b8164df: ``mce_loss_func`` and the training step of
``main_pretrain.py`` on the model of ``mec/builder.py``. The roles are the builder's: its
forward returns ``z = predictor(encoder(x))``, the **online** (student) output, and
``p = teacher(x)``, the **EMA teacher**'s projection under ``no_grad``; the step calls
``mce_loss_func(p2, z1)`` and ``mce_loss_func(p1, z2)``, so the teacher comes *first*. For
teacher projections ``t`` and online predictions ``o``, L2-normalised, with
``C(a, b) = (1/B) aᵀ H_B b`` (centring ``H_B``, divided by B):

* uniformity ``U = −λ · tr log(C(t, o) + μI)`` (the MCE with ``P = λI``, without ``+ tr Q``);
* alignment ``A = −tr((C(t, t) + μI) · log(C(o, o) + μI))``: a matrix cross-entropy with the
  teacher's covariance outside the log (the target distribution) and the student's inside (the
  model), as a cross-entropy is oriented; not the KL of Eq. 21;
* ``L = U + γ A`` with λ = μ = 0.5, γ = 1, Taylor order 4; the training step averages the two
  pairings ``(t₂, o₁)`` and ``(t₁, o₂)``, which :class:`~manifold_ssl.methods.SSLMethod` does
  (``target_first``).

Its optimum: ``tr log`` of a matrix and of its transpose agree (for the Taylor series as for
the exact log of the symmetrised matrix), so ``U`` is the same with the roles swapped. On an
eigenvalue ``x`` of ``C(t, o)``, ``U`` contributes ``−λ f(x + μ)`` with ``f`` the order-k
Taylor log around 1, whose derivative ``f'(y) = (1 − (1 − y)^k)/y`` is positive on (0, 2) and
whose second derivative is negative there (k = 4: ``−1 + 2(y−1) − 3(y−1)²``, no real root).
Every eigenvalue of ``C(t, o)`` is pushed *up*, and, as ``tr C(t, o) = mean_i t_iᵀo_i −
t̄ᵀō <= 1``, the concave sum is largest with all eigenvalues equal to 1/d at trace 1:
``o_i = t_i`` (aligned pairs), zero mean and ``C = I/d`` (uniform), where
``U = −λ d f(1/d + μ)``. ``A`` is linear in the teacher's ``P = C(t, t) + μI``, a constant
for the student; as a function of the student's ``Q = C(o, o) + μI`` it is the
cross-entropy ``−tr(P log Q)``, which, at a given trace of ``Q``, is smallest at ``Q ∝ P``
(Gibbs' inequality for the matrix KL): it draws the online covariance towards the teacher's,
whole spectrum included, and rewards spreading it (larger ``tr Q``). With the roles swapped
(student outside the log, ``−tr(Q log P)``), the student's covariance would be pulled into
the teacher's top eigen-directions alone (the gradient is ``−log P``), which collapses its
rank. Measured on free online embeddings against a fixed teacher (B = 256, d = 64, Adam, 300
steps, float64): the alignment term alone (λ = 0) keeps the effective rank at 59.5 of 64 in the
authors' orientation and takes it to 1.6 swapped; the whole loss takes the positive-pair cosine
from 0.82 to 0.998 at rank 61.9 in the authors' orientation, and to 0.74 at rank 54.1 swapped
(``tests/losses/test_objectives.py``).

``form="paper"`` is the literal Eq. 22 with ``C(Z1, Z2) = Z1ᵀ H_B Z2 / (B − 1)`` and the ridge
λ of Sec. 5 added to every covariance:
``MCE(I/d, C(Z1, Z2) + λI) + γ · MKL(C(Z1, Z1) + λI ‖ C(Z2, Z2) + λI)``, with the
stop-gradient of Sec. 5.1 on the *first* branch Z1 (applied by the training method, which
passes the target first for this form). Its optimum: the uniformity term is
``−(1/d) Σ f(y) + Σ y`` over the eigenvalues ``y`` of ``C + λI``, stationary where
``f'(y) = d``. With the exact log (``order=None``) that is ``C(Z1, Z2) = (1/d − λ)I``:
positive pairs align only when λ < 1/d (for λ > 1/d the optimum has *negative*
cross-covariance, pushing positive pairs apart). With an order-k Taylor log ``f'(y) <= k`` on
(0, 2), so for d > k there is no stationary point there and the loss keeps falling as the
eigenvalues turn negative: the literal Taylor form anti-aligns positive pairs. Hence the
default ``lambd=0`` and, for training with it, ``order=None``.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import distributed as dist_utils
from .._validation import check_choice, check_order, check_positive
from ..geometry._precision import full_precision, to_float64
from ..geometry.matrix_info import matrix_cross_entropy, matrix_kl, matrix_log
from ._common import Terms, check_pair, renamed, result_dtype, unit
from ._registry import register_loss

__all__ = ["MatrixSSLLoss", "global_covariances", "matrix_ssl_loss"]

FORMS = ("official", "paper")
#: λ of each form when not given: the authors' ``--mce_lambd``; the paper's ridge, 0 ("the λ
#: in MCE loss is robust and can even be set as 0", Sec. 4). μ (official only): ``--mce_mu``.
_DEFAULT_LAM = {"official": 0.5, "paper": 0.0}
_DEFAULT_MU = 0.5


def global_covariances(
    z1: torch.Tensor, z2: torch.Tensor, ddof: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``C(Z1,Z2), C(Z1,Z1), C(Z2,Z2)`` with ``C(A,B) = Aᵀ H_B B / (B − ddof)`` over the global
    batch (``ddof=1``: the paper's sample covariance; ``ddof=0``: the authors' code, / B).

    ``z1``, ``z2`` are (B, d); computed in float64 from sums (``Σ aᵢbᵢᵀ − B·ā b̄ᵀ``), which are
    summed over ranks when distributed (d×d numbers travel, whatever the batch size).
    """
    n = dist_utils.global_count(z1.shape[0], z1.device)
    a, b = to_float64(z1), to_float64(z2)
    sa = dist_utils.all_reduce_sum(a.sum(dim=0))  # (d,)
    sb = dist_utils.all_reduce_sum(b.sum(dim=0))

    def cov(x: torch.Tensor, y: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
        return (dist_utils.all_reduce_sum(x.transpose(0, 1) @ y) - torch.outer(sx, sy) / n) / (
            n - ddof
        )

    return cov(a, b, sa, sb), cov(a, a, sa, sa), cov(b, b, sb, sb)


def _resolve(form: str, lambd: float | None, mu: float | None) -> tuple[float, float]:
    check_choice(form, "form", FORMS)
    lambd = check_positive(_DEFAULT_LAM[form] if lambd is None else lambd, "lambd", allow_zero=True)
    if form == "paper":
        if mu is not None:
            raise ValueError(
                f"mu is the ridge of form='official'; the paper form's ridge is lambd, got mu={mu!r}"
            )
        return lambd, 0.0
    return lambd, check_positive(_DEFAULT_MU if mu is None else mu, "mu", allow_zero=True)


@renamed(lam="lambd")
def matrix_ssl_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    gamma: float = 1.0,
    lambd: float | None = None,
    order: int | None = 4,
    *,
    form: str = "official",
    mu: float | None = None,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, Terms]:
    """Matrix-SSL loss for one ordered pair of branches (module docstring: both forms, optima).

    Args:
        z1, z2: (B, d) branch outputs, B >= 2; L2-normalised here. Both forms take the
            target first: ``form="official"``: ``z1`` the (detached) EMA-teacher projections,
            the official code's ``p``, and ``z2`` the online predictions, its ``z``
            (``mce_loss_func(p2, z1)``); ``form="paper"``: ``z1`` the stop-gradient branch Z1
            of Sec. 5.1.
        gamma: alignment weight γ >= 0 (App. F.1 and the authors' ``--gamma``: 1).
        lambd: official: the weight λ of ``−tr(λI log(·))`` (default 0.5); paper: the ridge λ
            added to every covariance (default 0; λ >= 1/d makes the optimum anti-aligned).
        order: Taylor order of the matrix log around ``I`` (App. F.1: 4), or ``None`` for the
            exact log of the symmetrised matrices by eigendecomposition.
        form: ``"official"`` (default) or ``"paper"``.
        mu: official only: the ridge μ added to every covariance (default 0.5).
        return_terms: also return ``uniformity`` and ``alignment``.

    Computed in float64 with autocast off; returned in float32 (float64 for float64 input). The
    covariances are sums over ranks, so every rank returns the global-batch loss.
    """
    z1, z2 = check_pair(z1, z2, min_batch=2)
    gamma = check_positive(gamma, "gamma", allow_zero=True)
    order = check_order(order)
    lambd, mu = _resolve(form, lambd, mu)
    d = z1.shape[1]
    with full_precision(z1):
        ddof = 0 if form == "official" else 1
        c12, c11, c22 = global_covariances(unit(to_float64(z1)), unit(to_float64(z2)), ddof)
        eye = torch.eye(d, dtype=c12.dtype, device=c12.device)
        if form == "official":
            uniformity = -lambd * matrix_log(c12 + mu * eye, order).diagonal().sum()
            log_q = matrix_log(c22 + mu * eye, order)
            alignment = -((c11 + mu * eye) * log_q.transpose(-1, -2)).sum()  # −tr(P log Q)
        else:
            uniformity = matrix_cross_entropy(eye / d, c12 + lambd * eye, order)
            alignment = matrix_kl(c11 + lambd * eye, c22 + lambd * eye, order)
        loss = uniformity + gamma * alignment
    out = loss.to(result_dtype(z1))
    if return_terms:
        return out, {"uniformity": uniformity.detach(), "alignment": alignment.detach()}
    return out


@register_loss("matrix_ssl")
class MatrixSSLLoss(nn.Module):
    """Matrix-SSL. See :func:`matrix_ssl_loss`. ``forward(z1, z2)``, both (B, d).

    ``target_first``: the training method passes the target (EMA-teacher, stop-gradient)
    branch first, in both forms (the official step's ``mce_loss_func(p2, z1)`` with ``p`` the
    teacher; the paper's Z1 of Sec. 5.1).

    Example:
        >>> loss_fn = MatrixSSLLoss()
        >>> z1, z2 = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16)
        >>> loss = loss_fn(z1, z2)
        >>> loss.shape, bool(torch.isfinite(loss))
        (torch.Size([]), True)
        >>> loss.backward()
    """

    inputs = "pair"

    @renamed(lam="lambd")
    def __init__(
        self,
        gamma: float = 1.0,
        lambd: float | None = None,
        order: int | None = 4,
        form: str = "official",
        mu: float | None = None,
    ) -> None:
        super().__init__()
        self.gamma = check_positive(gamma, "gamma", allow_zero=True)
        self.lambd, self.mu = _resolve(form, lambd, mu)
        self.order = check_order(order)
        self.form = form
        self.target_first = True

    def forward(
        self, z1: torch.Tensor, z2: torch.Tensor, *, return_terms: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, Terms]:
        return matrix_ssl_loss(
            z1,
            z2,
            self.gamma,
            self.lambd,
            self.order,
            form=self.form,
            mu=None if self.form == "paper" else self.mu,
            return_terms=return_terms,
        )

    def extra_repr(self) -> str:
        mu = f", mu={self.mu}" if self.form == "official" else ""
        return f"form={self.form!r}, gamma={self.gamma}, lambd={self.lambd}{mu}, order={self.order}"
