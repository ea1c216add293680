"""The data plane: datasets of model files, sources, the node cache and the loader."""
