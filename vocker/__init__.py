"""vocker: reproducible Python environment images in a content-addressed store."""

__version__ = "0.1.0"
