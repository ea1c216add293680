"""Shared GPUs: a replica's share of one GPU, capped in the worker and packed by measured memory.

A service may ask for a fraction of a GPU (`resources.gpus: 0.5`). Ray then schedules replicas onto
GPUs by those fractions (logical accounting only: Ray caps nothing). So each worker caps its own CUDA
allocator at its share once its engine is loaded (`cap_to_share`): the engine's measured footprint
with `HEADROOM` for activations must fit the share, or the worker refuses to start and says so; past
the cap, an allocation raises torch's out-of-memory error inside that job only, which fails
retryable, and the other replicas on the GPU keep their memory.

Packing by measured memory (`gpu_request`): once a replica of a service has measured its footprint,
later replicas ask Ray for the footprint's share with headroom (rounded up to a `STEP`), never more
than the configured fraction, so small models pack more replicas per GPU than a cautious config
would. Where torch or CUDA is absent everything here is a no-op: nothing imports torch unless an
engine already did.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from swell.core.errors import EngineError
from swell.worker.contract import GpuShare

HEADROOM = 1.25  # footprint x this must fit the share: activations, the CUDA context, fragmentation
STEP = 0.05  # requests are rounded up to a multiple of this share of a GPU
MIN_REQUEST = STEP


def gpu_request(configured: float, measured: GpuShare | None, *, headroom: float = HEADROOM) -> float:
    """The GPU share to ask Ray for: the configured one, or less once a footprint was measured.
    Whole GPUs (1, 2, ...) are never shrunk: a replica that owns a GPU keeps it."""
    if measured is None or not 0 < configured < 1 or measured.total_bytes <= 0:
        return configured
    need = measured.footprint_bytes * headroom / measured.total_bytes
    return min(configured, max(MIN_REQUEST, math.ceil(round(need / STEP, 6)) * STEP))


def fits(footprint_bytes: int, total_bytes: int, fraction: float, *, headroom: float = HEADROOM) -> bool:
    """Whether a footprint with headroom fits `fraction` of a GPU of `total_bytes`."""
    return footprint_bytes * headroom <= fraction * total_bytes


def cap_to_share(fraction: float | None, *, headroom: float = HEADROOM) -> GpuShare | None:
    """In a worker after its engine loaded: cap this process's CUDA memory at `fraction` of the GPU.

    None (nothing done) without a fraction, or when the engine did not import torch, or without CUDA.
    EngineError when the measured footprint with headroom does not fit the share."""
    torch = sys.modules.get("torch")
    if fraction is None or fraction >= 1 or torch is None or not _cuda(torch):
        return None
    device = torch.cuda.current_device()
    footprint = int(torch.cuda.memory_reserved(device))
    total = int(torch.cuda.get_device_properties(device).total_memory)
    if not fits(footprint, total, fraction, headroom=headroom):
        raise EngineError(
            f"the engine holds {footprint / 2**30:.2f} GiB of GPU memory after load; with headroom "
            f"x{headroom:g} that does not fit its share {fraction:g} of {total / 2**30:.2f} GiB: "
            "raise resources.gpus",
            field="resources.gpus",
        )
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return GpuShare(footprint_bytes=footprint, total_bytes=total, cap_fraction=fraction)


def _cuda(torch: Any) -> bool:
    try:
        return bool(torch.cuda.is_available())
    except Exception:  # a broken CUDA install reads as none
        return False
