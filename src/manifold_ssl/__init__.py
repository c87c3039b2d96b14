"""manifold-ssl: multi-view self-supervised learning on the geometry of neural manifolds.

Objectives live in :mod:`manifold_ssl.losses`, spectral and matrix-information quantities in
:mod:`manifold_ssl.geometry`, experiments of the papers in :mod:`manifold_ssl.experiments`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("manifold-ssl")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
