"""Reproducible EuroSAT land-use classification: a DVC pipeline around Lightning and timm."""

__version__ = "0.1.0"
