"""What each authors' published training code computes, re-implemented for the tests.

Written from reading the cited file at the cited commit, in the authors' own layout and order
of operations (PyTorch, as their code), sharing no code with ``manifold_ssl``. Where our
convention differs (input layout, normalisation done inside the loss, how DDP is handled), the
test adapts the inputs and says so; it never skips the difference. Single process only: the
distributed paths are compared with one process in ``tests/test_distributed.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mmcr_yerxa(z: torch.Tensor, n_aug: int, lmbda: float = 0.0) -> torch.Tensor:
    """ThomasYerxa/mmcr @ 287db45, ``mmcr/cifar_stl/loss_mmcr.py``, ``MMCR_Loss.forward``.

    ``z`` is ``(B·N, C)`` with the N views of an image in consecutive rows ("(B N) C").
    """
    z = F.normalize(z, dim=-1)
    b = z.shape[0] // n_aug
    z_local = z.reshape(b, n_aug, -1).permute(0, 2, 1)  # "(B N) C -> B C N"
    centroids = z_local.mean(dim=-1)
    local_nuc = torch.linalg.svdvals(z_local).sum() if lmbda != 0.0 else torch.tensor(0.0)
    global_nuc = torch.linalg.svdvals(centroids).sum()
    return lmbda * local_nuc / z_local.shape[0] - global_nuc


def mmcr_momentum_yerxa(
    z: torch.Tensor, z_m: torch.Tensor, n_aug: int, lmbda: float = 0.0
) -> torch.Tensor:
    """ThomasYerxa/mmcr @ 3281dad, ``mmcr/imagenet/loss_mmcr_momentum.py``: centroids are
    ``½(mean of online views + mean of momentum views)``; the local term sees online views."""
    z, z_m = F.normalize(z, dim=-1), F.normalize(z_m, dim=-1)
    b = z.shape[0] // n_aug
    z_local = z.reshape(b, n_aug, -1).permute(0, 2, 1)
    z_m_local = z_m.reshape(b, n_aug, -1).permute(0, 2, 1)
    local_nuc = torch.linalg.svdvals(z_local).sum() if lmbda != 0 else 0
    centroids = (z_local.mean(dim=-1) + z_m_local.mean(dim=-1)) * 0.5
    global_nuc = torch.linalg.svdvals(centroids).sum()
    return -1.0 * global_nuc + lmbda * local_nuc / z_local.shape[0]


def clamp_published(preds: torch.Tensor, n_views: int, rs: float = 7.0) -> torch.Tensor:
    """guanming-zhang/clamp @ 1a7eb9a, ``model/loss_module.py``,
    ``LogRepulsiveEllipsoidPackingLossUnitNorm.__call__`` with the CIFAR-10 settings of
    ``default_configs/default_config_cifar10.ini`` (lw0 = 0, lw1 = 1, pot_pow = 2) and the
    class defaults min_margin = 1e-3, max_range = 1.5.

    ``preds`` is ``(V·B, O)`` with the B images of view v in rows ``v·B … v·B + B − 1``.
    """
    batch_size = preds.shape[0] // n_views
    preds = torch.reshape(preds, (n_views, batch_size, preds.shape[-1]))
    com = torch.mean(preds, dim=(0, 1))
    preds = preds - com
    preds = F.normalize(preds, dim=-1)
    centers = torch.mean(preds, dim=0)
    preds = preds - centers
    traces = torch.sum(torch.permute(preds, (1, 0, 2)) ** 2, dim=(1, 2)) / (n_views - 1.0)
    radii = rs * torch.sqrt(traces / min(preds.shape[-1], n_views) + 1e-12)
    diff = centers[:, None, :] - centers[None, :, :]
    dist_matrix = torch.sqrt(torch.sum(diff**2, dim=-1) + 1e-12)
    sum_radii = radii[None, :] + radii[:, None] + 1e-6
    sum_radii = torch.min(sum_radii, 1.5 * torch.ones_like(sum_radii))
    nbr_mask = torch.logical_and(dist_matrix < sum_radii, dist_matrix > 1e-3)
    self_mask = torch.eye(batch_size, dtype=torch.bool)
    mask = torch.logical_and(nbr_mask, torch.logical_not(self_mask))
    ll = 0.5 * ((1.0 - dist_matrix[mask] / sum_radii[mask]) ** 2.0).sum() * 1.0
    ll = ll + 0.0 * torch.sum(radii)
    return torch.log(ll + 1e-6)


def _taylor_log(q: torch.Tensor, order: int = 4) -> torch.Tensor:
    n = q.shape[0]
    q = q - torch.eye(n, dtype=q.dtype)
    cur = q
    res = torch.zeros_like(q)
    for k in range(1, order + 1):
        res = res + cur * (1.0 / k) if k % 2 == 1 else res - cur * (1.0 / k)
        cur = cur @ q
    return res


def _mce_official(
    p: torch.Tensor,
    z: torch.Tensor,
    lamda: float,
    mu: float,
    order: int,
    correlation: bool,
) -> torch.Tensor:
    p, z = F.normalize(p), F.normalize(z)
    m, n = z.shape
    j_m = torch.eye(m, dtype=z.dtype) - torch.ones(m, 1, dtype=z.dtype) @ torch.ones(
        1, m, dtype=z.dtype
    ) * (1.0 / m)
    eye = torch.eye(n, dtype=z.dtype)
    if correlation:
        big_p = lamda * eye
        big_q = (1.0 / m) * (p.T @ j_m @ z) + mu * eye
    else:
        big_p = (1.0 / m) * (p.T @ j_m @ p) + mu * eye
        big_q = (1.0 / m) * (z.T @ j_m @ z) + mu * eye
    return torch.trace(-big_p @ _taylor_log(big_q, order))


def matrix_ssl_official(
    z1: torch.Tensor,
    z2: torch.Tensor,
    p1: torch.Tensor,
    p2: torch.Tensor,
    lamda: float = 0.5,
    mu: float = 0.5,
    order: int = 4,
    gamma: float = 1.0,
) -> torch.Tensor:
    """yifanzhang-pro/Matrix-SSL @ 422f289 (same at b8164df), ``main_pretrain.py:368–385``:
    ``mce_loss_func`` and the training step's ``mce_loss``, in the official names and roles of
    ``mec/builder.py``'s ``MEC.forward``, which returns ``z1, z2, p1.detach(), p2.detach()``:
    ``z = predictor(encoder(x))`` the **online** output, ``p = teacher(x)`` the **EMA
    teacher**'s projection. The step calls ``mce_loss_func(p2, z1)`` and
    ``mce_loss_func(p1, z2)``: the teacher is the function's ``p`` (outside the log in the
    alignment term), the online output its ``z`` (inside)."""
    kw = {"lamda": lamda, "mu": mu, "order": order}
    p1, p2 = p1.detach(), p2.detach()  # the builder's teacher runs under no_grad
    return (
        _mce_official(p2, z1, correlation=True, **kw)
        + _mce_official(p1, z2, correlation=True, **kw)
        + gamma * _mce_official(p2, z1, correlation=False, **kw)
        + gamma * _mce_official(p1, z2, correlation=False, **kw)
    ) * 0.5


def ntxent_lightly(out0: torch.Tensor, out1: torch.Tensor, temperature: float = 0.5):
    """lightly-ai/lightly @ bb5070f, ``lightly/loss/ntx_ent_loss.py``, ``NTXentLoss.forward``
    without a memory bank, on one process."""
    out0, out1 = F.normalize(out0, dim=1), F.normalize(out1, dim=1)
    b = out0.shape[0]
    diag_mask = torch.eye(b, dtype=torch.bool)
    logits_00 = out0 @ out0.T / temperature
    logits_01 = out0 @ out1.T / temperature
    logits_10 = out1 @ out0.T / temperature
    logits_11 = out1 @ out1.T / temperature
    logits_00 = logits_00[~diag_mask].view(b, -1)
    logits_11 = logits_11[~diag_mask].view(b, -1)
    logits = torch.cat(
        [torch.cat([logits_01, logits_00], dim=1), torch.cat([logits_10, logits_11], dim=1)]
    )
    labels = torch.arange(b).repeat(2)
    return F.cross_entropy(logits, labels)


def _off_diagonal(x: torch.Tensor) -> torch.Tensor:
    n, _ = x.shape
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def barlow_twins_official(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051):
    """facebookresearch/barlowtwins @ 046eec3, ``main.py``, ``BarlowTwins.forward`` (one GPU):
    ``bn`` is ``BatchNorm1d(affine=False)`` in training mode (biased variance, eps 1e-5)."""
    bn = torch.nn.BatchNorm1d(z1.shape[1], affine=False).to(z1.dtype)
    c = bn(z1).T @ bn(z2)
    c = c / z1.shape[0]
    on_diag = torch.diagonal(c).add(-1).pow(2).sum()
    off_diag = _off_diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


def vicreg_official(x: torch.Tensor, y: torch.Tensor, sim=25.0, std=25.0, cov=1.0):
    """facebookresearch/vicreg @ b42aa23, ``main_vicreg.py``, ``VICReg.forward`` (one GPU)."""
    batch_size, num_features = x.shape
    repr_loss = F.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 0.0001)
    std_y = torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    cov_x = (x.T @ x) / (batch_size - 1)
    cov_y = (y.T @ y) / (batch_size - 1)
    cov_loss = _off_diagonal(cov_x).pow(2).sum().div(num_features) + _off_diagonal(cov_y).pow(
        2
    ).sum().div(num_features)
    return sim * repr_loss + std * std_loss + cov * cov_loss


def byol_deepmind(
    pred1: torch.Tensor, pred2: torch.Tensor, proj1: torch.Tensor, proj2: torch.Tensor
) -> torch.Tensor:
    """google-deepmind/deepmind-research @ 4822a45, ``byol/byol_experiment.py`` (``_loss_fn``'s
    representation loss) with ``byol/utils/helpers.py``'s ``regression_loss``: the two pairings
    *summed* per image, then the mean over the batch; targets under ``stop_gradient``."""

    def l2_normalize(x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.clamp((x * x).sum(dim=-1, keepdim=True), min=1e-12))

    def regression_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((l2_normalize(x) - l2_normalize(y)) ** 2).sum(dim=-1)

    repr_loss = regression_loss(pred1, proj2.detach()) + regression_loss(pred2, proj1.detach())
    return repr_loss.mean()


def simsiam_official(
    p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor
) -> torch.Tensor:
    """facebookresearch/simsiam @ a7bc177, ``main_simsiam.py``: ``criterion = nn.CosineSimilarity(dim=1)``,
    ``loss = -(criterion(p1, z2).mean() + criterion(p2, z1).mean()) * 0.5`` (z detached by the
    model's forward)."""
    cos = torch.nn.CosineSimilarity(dim=1)
    return -(cos(p1, z2.detach()).mean() + cos(p2, z1.detach()).mean()) * 0.5


def clip_open_clip(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: float
) -> torch.Tensor:
    """mlfoundations/open_clip @ b01786f, ``src/open_clip/loss.py``, ``ClipLoss.forward`` on one
    process (features arrive normalised from the model's ``encode_*``)."""
    logits_per_image = logit_scale * image_features @ text_features.T
    logits_per_text = logit_scale * text_features @ image_features.T
    labels = torch.arange(image_features.shape[0])
    return (
        F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)
    ) / 2
