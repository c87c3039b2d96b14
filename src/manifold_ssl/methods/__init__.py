"""Methods: an objective paired with its heads, its view layout and its target network.

One small class, :class:`SSLMethod`, driven by the ``METHODS`` table, instead of a base class
per method: the only differences between methods are which heads exist, whether a momentum
(EMA) target exists, and how the views reach the loss:

* ``views``: all K views through backbone + projector, the loss takes (B, K, D)
  (MMCR, with the momentum views of Yerxa App. B when ``momentum > 0``; CLAMP; SimCLR);
* ``pair``: views 0 and 1, the loss takes (z1, z2) (Barlow Twins, VICReg);
* ``predict``: online predictions against target projections, symmetrised
  ``½[L(p1, t2) + L(p2, t1)]`` (BYOL, SimSiam, and Matrix-SSL with its EMA teacher, App. F).

Image–text methods (``MULTIMODAL``: multimodal MMCR, CLIP) pair an image tower with a text
tower in :class:`MultimodalMethod`, which has the same interface.
"""

from .method import METHODS, MethodSpec, SSLMethod, build_method
from .multimodal import MULTIMODAL, MultimodalMethod

__all__ = ["METHODS", "MULTIMODAL", "MethodSpec", "MultimodalMethod", "SSLMethod", "build_method"]
