"""recforge: deep recommendation models (NCF, DLRM, Wide & Deep) with one loop and one CLI."""

__version__ = "0.1.0"
