"""The AUTOMATIC1111-compatible door: `/sdapi/v1/*` and ControlNet's `/controlnet/*` onto Swell's jobs.

`config` is light (pydantic only: swell.core.config imports it); `mapping` turns web UI requests into
diffusers-engine job inputs and finished jobs into web UI answers (pure, no I/O); `router` holds the
routes. See `swell.gateway.a1111.router` for what is served and docs/usage.md for what is not.
"""
