"""The demo path with the real model: all-MiniLM-L6-v2 served by a real worker, offline."""

from __future__ import annotations

import math

import pytest

DEMO = """
services:
  - name: embeddings
    engine: embeddings
    options: {model: all-MiniLM-L6-v2}
    replicas: {min: 1, max: 1}
    max_batch_size: 32
brain: {mode: dry-run, tick_seconds: 1}
"""


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


@pytest.mark.slow
def test_embeddings_end_to_end(start_swell) -> None:
    swell = start_swell(DEMO)
    swell.wait_ready(1, timeout=180)
    texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Quarterly tax filing deadlines."]
    with swell.client() as client:
        response = client.post(
            "/v1/jobs", json={"service": "embeddings", "input": {"texts": texts}, "wait": 60}
        )
        assert response.status_code == 200, response.text
        job = response.json()
        bad = client.post("/v1/jobs", json={"service": "embeddings", "input": {"texts": "not a list"}})
        services = client.get("/v1/services").json()["services"]
        metrics = client.get("/metrics").text

    result = job["result"]
    assert (job["state"], result["model"], result["dimensions"]) == ("succeeded", "all-MiniLM-L6-v2", 384)
    cat, kitten, tax = result["embeddings"]
    assert cosine(cat, kitten) > cosine(cat, tax) + 0.3, "the real model puts paraphrases together"

    assert bad.status_code == 422 and "texts" in bad.json()["field"]

    (service,) = services
    (replica,) = service["replicas"]
    assert replica["model"] == "all-MiniLM-L6-v2" and replica["jobs_done"] >= 1
    assert {"load"} <= set(replica["phases"]), "load time is recorded per replica"
    assert "plan" in service, "the brain's dry-run plan is shown next to the replicas"
    assert "swell_" in metrics
