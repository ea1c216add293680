"""On a CUDA machine: a worker's cap on its share of the GPU holds, and a footprint that does not fit
its share is refused. Each check runs in its own process (a cap is per process). Skips without CUDA."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def run(code: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", textwrap.dedent(code)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_an_allocation_past_the_share_fails_in_that_process_only() -> None:
    result = run(
        """
        import torch
        from swell.cluster.gpu import cap_to_share
        total = torch.cuda.get_device_properties(0).total_memory
        held = torch.empty(int(total * 0.05), dtype=torch.uint8, device="cuda")  # the "model"
        share = cap_to_share(0.25)
        assert share is not None and share.cap_fraction == 0.25 and share.footprint_bytes >= held.numel()
        try:
            torch.empty(int(total * 0.3), dtype=torch.uint8, device="cuda")
        except torch.cuda.OutOfMemoryError:
            print("capped")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "capped"


def test_a_footprint_that_does_not_fit_its_share_is_refused() -> None:
    result = run(
        """
        import torch
        from swell.cluster.gpu import cap_to_share
        from swell.core.errors import EngineError
        total = torch.cuda.get_device_properties(0).total_memory
        held = torch.empty(int(total * 0.1), dtype=torch.uint8, device="cuda")
        try:
            cap_to_share(0.05)
        except EngineError as exc:
            print("refused" if "resources.gpus" in str(exc) else exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "refused"
