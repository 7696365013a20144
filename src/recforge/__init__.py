"""recforge: deep recommendation models (NCF, DLRM, Wide & Deep) with one loop and one CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("recforge")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
