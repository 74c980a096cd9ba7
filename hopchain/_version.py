"""The single version string of hopchain."""

__version__ = "0.1.0"
