"""Backbones (written here, or from torchvision and timm), projector/predictor heads and the
momentum encoder."""

from .backbones import BACKBONES, ConvNet, ResNet, backbone_problem, build_backbone
from .ecosystem import EcosystemBackbone, cifar_stem
from .heads import MomentumEncoder, cosine_momentum, mlp_from_spec

__all__ = [
    "BACKBONES",
    "ConvNet",
    "EcosystemBackbone",
    "MomentumEncoder",
    "ResNet",
    "backbone_problem",
    "build_backbone",
    "cifar_stem",
    "cosine_momentum",
    "mlp_from_spec",
]
