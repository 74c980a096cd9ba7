"""hopchain: an anonymizing multi-hop onion-routing proxy chain."""

from hopchain._version import __version__

__all__ = ["__version__"]
