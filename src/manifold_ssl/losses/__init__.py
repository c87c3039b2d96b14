"""Objectives: one file per paper objective, each a pure function plus a thin ``nn.Module``.

``LOSSES`` maps a name to its module class; :func:`build_loss` instantiates one.
Every batch-coupled loss sees the global batch under ``torch.distributed``
(see :mod:`manifold_ssl.distributed`).
"""

from ._registry import LOSSES, build_loss, register_loss
from .barlow_twins import BarlowTwinsLoss, barlow_twins_loss
from .byol import BYOLLoss, SimSiamLoss, byol_loss, simsiam_loss
from .clamp import NO_OVERLAP_LOSS, CLAMPLoss, clamp_loss
from .coding_rate import MECLoss, TCRLoss, mec_loss, tcr_loss
from .matrix_ssl import MatrixSSLLoss, matrix_ssl_loss
from .mce_lm import MCELMLoss, mce_lm_loss
from .mmcr import MMCRLoss, MultimodalMMCRLoss, mmcr_loss, multimodal_mmcr_loss
from .simclr import CLIPLoss, SimCLRLoss, clip_loss, simclr_loss
from .vicreg import VICRegLoss, vicreg_loss
from .wang_isola import AlignmentLoss, UniformityLoss, alignment_loss, uniformity_loss

__all__ = [
    "LOSSES",
    "NO_OVERLAP_LOSS",
    "AlignmentLoss",
    "BYOLLoss",
    "BarlowTwinsLoss",
    "CLAMPLoss",
    "CLIPLoss",
    "MCELMLoss",
    "MECLoss",
    "MMCRLoss",
    "MatrixSSLLoss",
    "MultimodalMMCRLoss",
    "SimCLRLoss",
    "SimSiamLoss",
    "TCRLoss",
    "UniformityLoss",
    "VICRegLoss",
    "alignment_loss",
    "barlow_twins_loss",
    "build_loss",
    "byol_loss",
    "clamp_loss",
    "clip_loss",
    "matrix_ssl_loss",
    "mce_lm_loss",
    "mec_loss",
    "mmcr_loss",
    "multimodal_mmcr_loss",
    "register_loss",
    "simclr_loss",
    "simsiam_loss",
    "tcr_loss",
    "uniformity_loss",
    "vicreg_loss",
]
