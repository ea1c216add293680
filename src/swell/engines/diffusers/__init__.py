"""The `diffusers` engine: Stable Diffusion text-to-image and image-to-image, LoRA and ControlNet.

`spec` (options, input, units, batch key) imports no torch; `engine` holds the pipelines and is
imported only in the worker. `samplers`, `infotext` and `controlnet` are pure helpers.
"""

from swell.engines.diffusers.spec import SPEC

__all__ = ["SPEC"]
