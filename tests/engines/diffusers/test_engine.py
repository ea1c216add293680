"""The diffusers engine on tiny random models (noise, real layouts) through the real pipelines, on CPU."""

from __future__ import annotations

import base64
import io
import resource
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from swell.core.errors import ValidationError
from swell.engines.base import JobCancelled, MemorySignals
from swell.engines.diffusers.controlnet import canny
from swell.engines.diffusers.infotext import parse_infotext
from tests.engines.diffusers.conftest import LORAS, SMALL, context


def run(
    engine: Any, tmp_path: Path, *payloads: dict[str, Any], signals: MemorySignals | None = None
) -> list[Any]:
    ids = [f"j{i}" for i in range(len(payloads))]
    return engine.run(list(payloads), context(ids, tmp_path, signals))


def file_bytes(tmp_path: Path, job: str, name: str = "0.png") -> bytes:
    return (tmp_path / "files" / job / name).read_bytes()


def pixels(tmp_path: Path, job: str, name: str = "0.png") -> np.ndarray[Any, Any]:
    return np.asarray(Image.open(io.BytesIO(file_bytes(tmp_path, job, name))), dtype=np.float32)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_same_seed_and_parameters_give_the_same_bytes(engine: Any, tmp_path: Path) -> None:
    job = {"prompt": "a red cat", "seed": 7, "sampler": "Euler a", **SMALL}
    [first] = run(engine, tmp_path / "a", job)
    run(engine, tmp_path / "b", job)
    run(engine, tmp_path / "c", {**job, "seed": 8})
    assert first["seeds"] == [7] and first["images"][0] == {
        "file": "0.png",
        "seed": 7,
        "width": 64,
        "height": 64,
    }
    assert file_bytes(tmp_path / "a", "j0") == file_bytes(tmp_path / "b", "j0")
    assert file_bytes(tmp_path / "a", "j0") != file_bytes(tmp_path / "c", "j0")


def test_a_png_carries_a1111_parameters(engine: Any, tmp_path: Path) -> None:
    job = {"prompt": "a photo of a dog", "negative_prompt": "blurry", "seed": 3, "images": 2, **SMALL}
    [result] = run(engine, tmp_path, {**job, "sampler": "DPM++ 2M", "guidance": 5.5})
    assert result["seeds"] == [3, 4] and [i["file"] for i in result["images"]] == ["0.png", "1.png"]
    text = Image.open(tmp_path / "files" / "j0" / "1.png").text["parameters"]  # type: ignore[attr-defined]
    prompt, negative, fields = parse_infotext(text)
    assert (prompt, negative) == ("a photo of a dog", "blurry")
    assert fields["Seed"] == "4" and fields["Steps"] == "3" and fields["CFG scale"] == "5.5"
    assert (
        fields["Sampler"] == "DPM++ 2M" and fields["Schedule type"] == "Karras" and fields["Size"] == "64x64"
    )
    assert result["parameters"] == Image.open(tmp_path / "files" / "j0" / "0.png").text["parameters"]  # type: ignore[attr-defined]


def test_a_random_seed_is_reported_and_reproduces(engine: Any, tmp_path: Path) -> None:
    [result] = run(engine, tmp_path / "a", {"prompt": "x", "seed": -1, **SMALL})
    seed = result["seeds"][0]
    [again] = run(engine, tmp_path / "b", {"prompt": "x", "seed": seed, **SMALL})
    assert again["seeds"] == [seed]
    assert file_bytes(tmp_path / "a", "j0") == file_bytes(tmp_path / "b", "j0")


def test_jobs_sharing_a_shape_batch_and_match_their_solo_runs(engine: Any, tmp_path: Path) -> None:
    jobs = [{"prompt": "a cat", "seed": 1, **SMALL}, {"prompt": "a dog", "seed": 2, "images": 2, **SMALL}]
    signals = MemorySignals()
    results = run(engine, tmp_path / "batch", *jobs, signals=signals)
    [solo] = run(engine, tmp_path / "solo", jobs[1])
    assert results[1]["seeds"] == solo["seeds"] == [2, 3]
    batched, alone = pixels(tmp_path / "batch", "j1", "1.png"), pixels(tmp_path / "solo", "j0", "1.png")
    assert np.abs(batched - alone).max() <= 2  # one call or two: the same image (float summation order aside)
    assert signals.fractions("j0")[-1] == 1.0 and signals.fractions("j0") == sorted(signals.fractions("j0"))
    assert set(signals.previews) == {"j0", "j1"}


def test_img2img_shares_the_weights_and_follows_its_init_image(engine: Any, tmp_path: Path) -> None:
    inits = []
    for colour in ((255, 255, 255), (0, 0, 0)):
        data = io.BytesIO()
        Image.new("RGB", (64, 64), colour).save(data, format="PNG")
        inits.append(b64(data.getvalue()))
    job = {"prompt": "x", "seed": 5, "steps": 10, "width": 64, "height": 64, "strength": 0.2}
    [white] = run(engine, tmp_path / "a", {**job, "init_image": inits[0]})
    run(engine, tmp_path / "b", {**job, "init_image": inits[1]})
    run(engine, tmp_path / "c", {**job, "init_image": inits[0]})  # the same again
    assert "Denoising strength: 0.2" in white["parameters"]
    assert not np.array_equal(pixels(tmp_path / "a", "j0"), pixels(tmp_path / "b", "j0"))
    assert file_bytes(tmp_path / "a", "j0") == file_bytes(tmp_path / "c", "j0")
    assert engine._pipes["img2img"].unet is engine._pipes["txt2img"].unet


def test_controlnet_conditions_the_image(engine: Any, tmp_path: Path) -> None:
    square = Image.new("RGB", (64, 64))
    square.paste((255, 255, 255), (16, 16, 48, 48))
    data = io.BytesIO()
    square.save(data, format="PNG")
    job = {"prompt": "x", "seed": 1, "control_image": b64(data.getvalue()), **SMALL}
    run(engine, tmp_path / "a", {**job, "control_scale": 0.0})
    [full] = run(engine, tmp_path / "b", {**job, "control_scale": 2.0})
    assert 'ControlNet 0: "Module: canny' in full["parameters"]
    assert not np.array_equal(pixels(tmp_path / "a", "j0"), pixels(tmp_path / "b", "j0"))


def test_canny_finds_the_edges_of_a_square() -> None:
    square = Image.new("L", (64, 64))
    square.paste(255, (16, 16, 48, 48))
    edges = np.asarray(canny(square))[:, :, 0] > 0
    assert edges[16:48, 14:18].any() and edges[14:18, 16:48].any()  # the left and top sides
    assert not edges[24:40, 24:40].any() and not edges[:8, :8].any()  # inside and far outside: none
    assert not np.asarray(canny(Image.new("RGB", (32, 32), (9, 9, 9)))).any()


def test_loras_change_the_image_and_switch_back(engine: Any, tmp_path: Path) -> None:
    job = {"prompt": "x", "seed": 11, **SMALL}
    run(engine, tmp_path / "base", job)
    [styled] = run(engine, tmp_path / "lora", {**job, "loras": [{"name": "tiny-1", "weight": 1.0}]})
    run(engine, tmp_path / "back", job)
    assert "<lora:tiny-1:1>" in styled["parameters"]
    assert file_bytes(tmp_path / "base", "j0") != file_bytes(tmp_path / "lora", "j0")
    assert file_bytes(tmp_path / "base", "j0") == file_bytes(tmp_path / "back", "j0")


def test_an_unknown_lora_fails_only_its_job(engine: Any, tmp_path: Path) -> None:
    bad, good = run(
        engine, tmp_path, {"prompt": "x", "loras": [{"name": "missing"}], **SMALL}, {"prompt": "y", **SMALL}
    )
    assert isinstance(bad, ValidationError) and bad.field == "input.loras"
    assert isinstance(good, dict)


def test_many_lora_switches_stay_in_the_cache_bounds_and_memory(engine: Any) -> None:
    cache = engine._loras
    rng = np.random.default_rng(0)
    picks = [
        [
            (f"tiny-{i}", float(w))
            for i, w in zip(rng.choice(LORAS, 2, replace=False), rng.uniform(0.2, 1, 2), strict=True)
        ]
        for _ in range(200)
    ]
    for loras in picks[:40]:  # warm: every adapter has been loaded and evicted at least once
        cache.activate(loras)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loads = cache.stats.loads
    for loras in picks[40:]:
        cache.activate(loras)
        assert len(cache.loaded) <= cache.capacity
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert cache.stats.loads > loads and cache.stats.evictions > 0
    assert grown < 20 * 1024, f"peak RSS grew {grown} KiB over 160 switches"
    adapters = {a for names in engine._base.get_list_adapters().values() for a in names}
    assert len(adapters) <= cache.capacity
    cache.activate([])


def test_cancel_stops_at_the_next_step(engine: Any, tmp_path: Path) -> None:
    signals = MemorySignals()
    original = signals.progress

    def cancel_after_two(job_id: str, fraction: float, preview: bytes | None, message: str | None) -> None:
        original(job_id, fraction, preview, message)
        if len(signals.fractions(job_id)) == 2:
            signals.cancel(job_id)

    signals.progress = cancel_after_two  # type: ignore[method-assign]
    [result] = run(engine, tmp_path, {"prompt": "x", "steps": 20, "width": 64, "height": 64}, signals=signals)
    assert isinstance(result, JobCancelled)
    assert len(signals.fractions("j0")) == 2 and not (tmp_path / "files" / "j0").exists()
