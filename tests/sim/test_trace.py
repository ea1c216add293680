"""Trace readers on the first rows of the real files (skipped when ../shared/data is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from swell.core.errors import ValidationError
from swell.sim.trace import LlmRates, read_trace

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
IMAGE = DATA / "sd_requests_2024-11-15_to_11-27.csv"
LLM = DATA / "azure_llm_code_2023-11-16.csv"


def head(src: Path, dst: Path, rows: int) -> Path:
    with src.open() as f:
        dst.write_text("".join(next(f) for _ in range(rows + 1)))
    return dst


@pytest.mark.skipif(not IMAGE.exists(), reason="the image trace is not in ../shared/data")
def test_image_trace_first_rows(tmp_path: Path) -> None:
    trace = read_trace(head(IMAGE, tmp_path / "sd.csv", 5))
    assert trace.kind == "image" and len(trace) == 5 and trace.slots == 1
    assert trace.arrival.tolist() == [0.0, 4704.0, 4756.0, 4766.0, 5024.0]
    assert trace.service.tolist()[:3] == [32.0, 43.0, 36.0]
    assert trace.units.tolist()[:3] == [30.0, 40.0, 320.0]  # steps x images
    assert [trace.models[m] for m in trace.model[:3]] == ["M0000", "M0001", "M0001"]


@pytest.mark.skipif(not LLM.exists(), reason="the LLM trace is not in ../shared/data")
def test_llm_trace_first_rows(tmp_path: Path) -> None:
    rates = LlmRates(prefill_tokens_per_s=1000, decode_tokens_per_s=10, batch=8)
    trace = read_trace(head(LLM, tmp_path / "llm.csv", 3), llm=rates)
    assert trace.kind == "llm" and trace.slots == 8 and trace.models == ("llm",)
    assert trace.arrival[1] == pytest.approx(0.052, abs=1e-6)  # 7 fractional digits parsed
    assert trace.service[0] == pytest.approx(4808 / 1000 + 10 / 10)
    assert np.all(np.diff(trace.arrival) >= 0)


def test_unknown_format_and_missing_file_name_the_trace(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    for path in (bad, tmp_path / "missing.csv"):
        with pytest.raises(ValidationError) as err:
            read_trace(path)
        assert err.value.field == "trace"
