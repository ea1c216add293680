"""The data plane: datasets of model files, sources, the node cache and the loader.

Importing this package is light: torch, obstore and prometheus_client are imported where used.
"""

from swell.data.config import DatasetConfig
from swell.data.loader import LoadTimings, load_from_reader, load_safetensors

__all__ = ["DatasetConfig", "LoadTimings", "load_from_reader", "load_safetensors"]
