"""Backbones, projector/predictor heads and the momentum encoder."""

from .backbones import BACKBONES, ConvNet, ResNet, build_backbone
from .heads import MomentumEncoder, cosine_momentum, mlp_from_spec

__all__ = [
    "BACKBONES",
    "ConvNet",
    "MomentumEncoder",
    "ResNet",
    "build_backbone",
    "cosine_momentum",
    "mlp_from_spec",
]
