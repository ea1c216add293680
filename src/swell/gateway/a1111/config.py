"""`a1111:` in swell.yaml: which service the AUTOMATIC1111-compatible door submits to.

    a1111:
      service: sd            # a diffusers service; default: the first one
      controlnet_service: sd-canny   # where requests with a ControlNet unit go; default: `service`
                                     # when it has a ControlNet, else the first diffusers service that has

Checked when the gateway starts (the engine names need the registry): a name that is not a diffusers
service is a ConfigError naming `a1111.service` (or `a1111.controlnet_service`). This module imports
pydantic only, since swell.core.config imports it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

SERVICE_NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"  # swell.core.config.NAME_PATTERN (not imported: a cycle)


class A1111Config(BaseModel):
    """The A1111 door's settings (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True  # False: no /sdapi or /controlnet routes at all
    service: str | None = Field(default=None, pattern=SERVICE_NAME)
    controlnet_service: str | None = Field(default=None, pattern=SERVICE_NAME)


__all__ = ["A1111Config"]
