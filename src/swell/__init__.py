"""Swell: serve generative-AI models to bursty crowds on expensive GPUs."""

from swell.core.errors import SwellError

__version__ = "0.1.0"
__all__ = ["SwellError", "__version__"]
