"""The public surface of swell.data, and that importing it stays light (no torch, obstore or prometheus)."""

from __future__ import annotations

import subprocess
import sys

import swell.data


def test_exported_members() -> None:
    expected = ["DatasetConfig", "LoadTimings", "load_from_reader", "load_safetensors"]
    assert sorted(swell.data.__all__) == expected


def test_import_is_light() -> None:
    code = (
        "import sys, swell.data, swell.data.datasets, swell.data.cli; "
        "print(sorted(m for m in ('torch', 'obstore', 'prometheus_client') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
