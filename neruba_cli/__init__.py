"""Neruba: a usage, hybrid and prepaid billing engine driven by an operator CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("neruba")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
