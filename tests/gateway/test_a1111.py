"""The AUTOMATIC1111 door against a real uvicorn on loopback over a real SQLite queue, answered by a
real worker process running the diffusers engine on tiny random SD and ControlNet models (the images
are noise; the protocol, seeds, infotext and routing are what is checked). Requests are sent by the
real `webuiapi` client (Basic auth, its full default payload) and as the bots send them by hand."""

from __future__ import annotations

import base64
import io
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from PIL import Image

from swell.core.config import ServiceConfig, Settings, parse_config
from swell.core.errors import ConfigError, NotFound, ValidationError
from swell.core.jobs import JobState
from swell.engines.diffusers import samplers
from swell.gateway.a1111 import mapping
from swell.gateway.a1111.router import main_service
from swell.gateway.app import create_app
from swell.gateway.limits import GatewayLimits
from swell.gateway.protocol import serving_config
from swell.queue.base import QueueBackend, open_queue
from tests.gateway.helpers import API_KEY
from tests.support import free_port, wait_for

pytest.importorskip("diffusers")
pytest.importorskip("peft")

pytestmark = pytest.mark.slow

SMALL = {"steps": 2, "width": 64, "height": 64}


def basic(user: str, key: str = API_KEY) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()}


def config(tiny: dict[str, Path]) -> dict[str, Any]:
    options = {
        "path": str(tiny["sd"]),
        "loras": str(tiny["loras"]),
        "controlnet": str(tiny["controlnet"]),
        "device": "cpu",
        "warmup": False,
        "preview_every": 1,
        **SMALL,
    }
    return {
        "services": [
            {
                "name": "sd",
                "engine": "diffusers",
                "options": options,
                "models": {"tiny-a": {"name": "tiny-a"}, "tiny-b": {"name": "tiny-b"}},
                "affinity": {"max_loaded": 2},
                "max_batch_size": 1,
                "lease_seconds": 10.0,
            },
        ],
        "gateway": {"max_wait_seconds": 240},
    }


class Server:
    def __init__(self, base: str, queue: QueueBackend) -> None:
        self.base = base
        self.queue = queue

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
        return httpx.post(f"{self.base}{path}", json=body, headers=headers or basic("bot"), timeout=240, **kw)

    def get(self, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.get(f"{self.base}{path}", headers=headers or basic("bot"), timeout=30)

    def job(self, info: dict[str, Any]) -> Any:
        return self.queue.get(info["job_id"])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from swell.models.tiny import make_tiny

    tmp = tmp_path_factory.mktemp("a1111")
    tiny = {
        "sd": make_tiny("sd", tmp / "sd"),
        "controlnet": make_tiny("controlnet", tmp / "controlnet"),
        "loras": make_tiny("lora", tmp / "loras", count=2),
    }
    parsed = parse_config(config(tiny))
    queue = open_queue(f"sqlite:///{tmp / 'q.db'}")
    limits = GatewayLimits(max_loop_lag_seconds=60.0)  # a busy machine must not turn answers into 503s
    app = create_app(parsed, Settings(data_dir=tmp, api_key=API_KEY), queue, limits=limits)
    port = free_port()
    uv = uvicorn.Server(serving_config(app, "127.0.0.1", port, app.state.limits, lifespan="on"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    command = [
        sys.executable, "-m", "swell.worker",
        "--queue", f"sqlite:///{tmp / 'q.db'}",
        "--service", json.dumps(parsed.services[0].model_dump(mode="json")),
        "--replica-id", "w1",
        "--data-dir", str(tmp),
    ]  # fmt: skip
    worker = subprocess.Popen(command)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{base}/healthz", timeout=1).status_code == 200, 20, "uvicorn")
        yield Server(base, queue)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        uv.should_exit = True
        thread.join(10)
        queue.close()


def png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


def init_image() -> str:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


# -- generation -------------------------------------------------------------------------------------------


def test_webuiapi_txt2img_with_basic_auth(server: Server) -> None:
    webuiapi = pytest.importorskip("webuiapi")
    host, port = server.base.removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port), username="bot", password=API_KEY)
    result = api.txt2img(
        prompt="a cat <lora:tiny-0:0.5>",
        negative_prompt="blurry",
        seed=7,
        batch_size=2,
        sampler_name="Euler a",
        cfg_scale=5,
        **SMALL,
    )
    assert [image.size for image in result.images] == [(64, 64), (64, 64)]
    assert result.info["all_seeds"] == [7, 8] and result.info["seed"] == 7
    assert result.info["sampler_name"] == "Euler a" and result.info["cfg_scale"] == 5
    assert result.info["sd_model_name"] == "tiny-a"  # the service's default checkpoint
    for image, seed, text in zip(result.images, [7, 8], result.info["infotexts"], strict=True):
        assert image.info["parameters"] == text
        assert f"Seed: {seed}" in text and "Sampler: Euler a" in text and "<lora:tiny-0:0.5>" in text
        assert "\nNegative prompt: blurry\n" in text
    assert result.parameters["prompt"] == "a cat <lora:tiny-0:0.5>"
    job = server.job(result.info)
    assert job.input["loras"] == [{"name": "tiny-0", "weight": 0.5}] and job.input["images"] == 2
    assert job.input["prompt"] == "a cat" and job.model == "tiny-a"


def test_a_bot_payload_picks_its_checkpoint_by_title(server: Server) -> None:
    body = {
        "prompt": "a lighthouse",
        "steps": 2,
        "negative_prompt": "",
        "sampler_name": "DPM++ 2M Karras",
        "cfg_scale": 7,
        "seed": 3,
        "width": 64,
        "height": 64,
        "n_iter": 2,
        "override_settings": {"sd_model_checkpoint": "tiny-b.safetensors [9aba26abdf]"},
        "override_settings_restore_afterwards": True,
        "some_extension_field": {"ignored": True},
    }
    response = server.post("/sdapi/v1/txt2img", body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 200, response.text
    answer = response.json()
    info = json.loads(answer["info"])
    assert info["all_seeds"] == [3, 4] and info["sd_model_name"] == "tiny-b"
    assert info["extra_generation_params"] == {"Schedule type": "Karras"}
    assert server.job(info).model == "tiny-b"
    texts = [png(base64.b64decode(image)).info["parameters"] for image in answer["images"]]
    assert texts == info["infotexts"] and "Sampler: DPM++ 2M, Schedule type: Karras" in texts[0]
    assert answer["parameters"]["some_extension_field"] == {"ignored": True}


def test_webuiapi_img2img_from_a_data_url(server: Server) -> None:
    webuiapi = pytest.importorskip("webuiapi")
    host, port = server.base.removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port), username="bot", password=API_KEY)
    source = Image.open(io.BytesIO(base64.b64decode(init_image())))
    result = api.img2img(images=[source], prompt="repaint", denoising_strength=0.5, seed=11, **SMALL)
    assert len(result.images) == 1 and result.info["denoising_strength"] == 0.5
    assert "Denoising strength: 0.5" in result.images[0].info["parameters"]
    assert server.job(result.info).input["init_image"].startswith("data:image/png;base64,")


def test_a_controlnet_unit_guides_the_job(server: Server) -> None:
    webuiapi = pytest.importorskip("webuiapi")
    models = server.get("/controlnet/model_list").json()["model_list"]
    assert models == ["controlnet"] and server.get("/controlnet/version").json() == {"version": 2}
    assert server.get("/controlnet/module_list").json()["module_list"] == ["none", "canny"]
    source = Image.open(io.BytesIO(base64.b64decode(init_image())))
    unit = webuiapi.ControlNetUnit(image=source, module="canny", model=models[0], weight=0.8,
                                   threshold_a=50, threshold_b=150)  # fmt: skip
    host, port = server.base.removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port), username="bot", password=API_KEY)
    result = api.txt2img(prompt="edges", seed=5, controlnet_units=[unit], **SMALL)
    assert 'ControlNet 0: "Module: canny, Model: controlnet, Weight: 0.8"' in result.info["infotexts"][0]
    job = server.job(result.info)
    assert (job.input["canny"], job.input["control_scale"], job.input["canny_low"]) == (True, 0.8, 50)


# -- lists and options ------------------------------------------------------------------------------------


def test_the_lists_match_the_engine(server: Server) -> None:
    models = server.get("/sdapi/v1/sd-models").json()
    assert [m["title"] for m in models] == ["tiny-a", "tiny-b"] and models[0]["model_name"] == "tiny-a"
    listed = server.get("/sdapi/v1/samplers").json()
    assert [s["name"] for s in listed] == list(samplers.SAMPLERS)
    assert {"name": "Euler a", "aliases": ["k_euler_a", "k_euler_ancestral"], "options": {}} in listed
    assert next(s for s in listed if s["name"] == "DPM++ 2M")["options"] == {"scheduler": "karras"}
    schedulers = server.get("/sdapi/v1/schedulers").json()
    assert [s["label"] for s in schedulers] == list(samplers.SCHEDULES)
    assert schedulers[0]["name"] == "automatic" and schedulers[4]["name"] == "sgm_uniform"
    assert [lora["name"] for lora in server.get("/sdapi/v1/loras").json()] == ["tiny-0", "tiny-1"]
    assert server.get("/sdapi/v1/scripts").json() == {"txt2img": [], "img2img": []}


def test_options_set_the_callers_default_checkpoint_only(server: Server) -> None:
    alice, bob = basic("alice"), basic("bob")
    assert server.get("/sdapi/v1/options", alice).json()["sd_model_checkpoint"] == "tiny-a"
    response = server.post("/sdapi/v1/options", {"sd_model_checkpoint": "tiny-b [0123456789]"}, alice)
    assert response.status_code == 200 and response.json() is None
    assert server.get("/sdapi/v1/options", alice).json()["sd_model_checkpoint"] == "tiny-b"
    assert server.get("/sdapi/v1/options", bob).json()["sd_model_checkpoint"] == "tiny-a"
    answer = server.post("/sdapi/v1/txt2img", {"prompt": "x", "seed": 1, **SMALL}, alice).json()
    assert server.job(json.loads(answer["info"])).model == "tiny-b"
    unknown = server.post("/sdapi/v1/options", {"sd_model_checkpoint": "sdxl.safetensors"}, alice)
    assert unknown.status_code == 404 and unknown.json()["error"] == "NotFound"
    assert "Model not found: 'sdxl.safetensors'" in unknown.json()["detail"]


# -- errors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"prompt": "x", "sampler_name": "DPM adaptive"}, 422, "sampler_name: sampler 'DPM adaptive' has no"),
        ({"prompt": "x", "scheduler": "polyexponential"}, 422, "scheduler: unknown schedule type"),
        ({"prompt": "x", "enable_hr": True}, 422, "enable_hr: the hires fix (enable_hr) is not supported"),
        ({"prompt": "x", "width": 100}, 422, "width: Input should be a multiple of 8"),
        ({"prompt": "x", "batch_size": 0}, 422, "batch_size: must be at least 1"),
        ({"prompt": "x", "steps": "many"}, 422, "steps: Input should be a valid integer"),
        ({"prompt": "x", "override_settings": {"sd_model_checkpoint": "nope"}}, 404, "Model not found"),
        ({"prompt": "x", "alwayson_scripts": {"ADetailer": {"args": [True, {}]}}}, 422, "ADetailer"),
        ({"prompt": "csam"}, 403, "prompt holds a blocked term"),
    ],
)
def test_errors_are_in_the_web_uis_shape(
    server: Server, body: dict[str, Any], status: int, detail: str
) -> None:
    response = server.post("/sdapi/v1/txt2img", body)
    assert response.status_code == status, response.text
    error = response.json()
    assert set(error) == {"error", "detail", "body", "errors"} and error["errors"] == error["detail"]
    assert detail in error["detail"]


def test_refusals_are_counted_for_the_door(server: Server) -> None:
    def refused() -> float:
        for line in httpx.get(f"{server.base}/metrics").text.splitlines():
            if line.startswith('swell_requests_refused_total{door="a1111",service="sd"}'):
                return float(line.split()[-1])
        return 0.0

    before = refused()
    assert (
        server.post("/sdapi/v1/img2img", {"prompt": "Child-Porn", "init_images": [init_image()]}).status_code
        == 403
    )
    assert refused() == before + 1


def test_img2img_needs_one_image_and_no_mask(server: Server) -> None:
    for body, field in (
        ({"prompt": "x"}, "init_images"),
        ({"prompt": "x", "init_images": [init_image(), init_image()]}, "init_images"),
        ({"prompt": "x", "init_images": [init_image()], "mask": init_image()}, "mask"),
        ({"prompt": "x", "init_images": ["bm90IGFuIGltYWdl"]}, "init_images"),
    ):
        response = server.post("/sdapi/v1/img2img", body)
        assert response.status_code == 422 and response.json()["detail"].startswith(field), response.text


def test_the_key_is_needed_as_bearer_or_basic(server: Server) -> None:
    for headers in (
        {},
        basic("bot", "wrong"),
        {"Authorization": "Basic bm8tY29sb24="},
        {"Authorization": "Bearer x"},
    ):
        response = httpx.get(f"{server.base}/sdapi/v1/sd-models", headers=headers)
        assert response.status_code == 401 and response.json()["error"] == "AuthError"
        assert response.headers["www-authenticate"].startswith("Basic")
    assert httpx.get(f"{server.base}/controlnet/version").status_code == 401
    assert server.get("/sdapi/v1/sd-models", {"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    assert server.get("/v1/services", basic("anyone")).status_code == 200  # Basic works on every door


# -- progress and interrupt ------------------------------------------------------------------------------


def test_progress_previews_and_interrupt_are_the_callers(server: Server) -> None:
    slow, other = basic("slow"), basic("other")
    idle = server.get("/sdapi/v1/progress", other).json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0 and idle["current_image"] is None
    answers: list[httpx.Response] = []
    body = {"prompt": "a long one", "steps": 150, "width": 64, "height": 64, "force_task_id": "task(42)"}
    thread = threading.Thread(target=lambda: answers.append(server.post("/sdapi/v1/txt2img", body, slow)))
    thread.start()
    seen: dict[str, Any] = {}

    def previewing() -> bool:
        seen.update(server.get("/sdapi/v1/progress", slow).json())
        return bool(seen["progress"] > 0 and seen["current_image"])

    wait_for(previewing, 180, "a progress report with a preview", interval=0.1)
    assert seen["state"]["job_count"] == 1 and seen["state"]["sampling_steps"] == 150
    assert 0 < seen["state"]["sampling_step"] <= 150
    png(base64.b64decode(seen["current_image"]))
    task = server.post("/internal/progress", {"id_task": "task(42)", "id_live_preview": -1}, slow).json()
    assert task["active"] is True and task["completed"] is False and task["progress"] > 0
    assert task["live_preview"].startswith("data:image/png;base64,") and task["id_live_preview"] > 0
    again = server.post("/internal/progress", {"id_task": "task(42)", "id_live_preview": 10**12}, slow).json()
    assert again["live_preview"] is None  # nothing newer than what the page has
    assert server.post("/internal/progress", {"id_task": "task(42)"}, other).json()["active"] is False
    assert server.get("/sdapi/v1/progress", other).json()["state"]["job_count"] == 0
    assert server.post("/sdapi/v1/interrupt", {}, slow).json() == {}
    thread.join(120)
    assert answers[0].status_code == 409 and "interrupted" in answers[0].json()["detail"]
    (job,) = [j for j in server.queue.jobs(service="sd", limit=50) if j.input.get("steps") == 150]
    assert job.state is JobState.CANCELLED
    done = server.post("/internal/progress", {"id_task": "task(42)"}, slow).json()
    assert done["completed"] is True and done["active"] is False


def test_a_client_that_leaves_cancels_its_job(server: Server) -> None:
    body = {"prompt": "abandoned", "steps": 150, "width": 64, "height": 64}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base}/sdapi/v1/txt2img", json=body, headers=basic("leaver"), timeout=1.0)
    (job,) = [j for j in server.queue.jobs(service="sd", limit=50) if j.input.get("prompt") == "abandoned"]
    wait_for(lambda: server.queue.get(job.id).state is JobState.CANCELLED, 60, "the cancel")


# -- the mapping, without a server ------------------------------------------------------------------------


def test_checkpoint_titles_map_to_keys_by_name() -> None:
    service = ServiceConfig(name="sd", engine="diffusers", options={"path": "/m/base"},
                            models={"dreamshaper": {}, "Real-Vision": {}})  # fmt: skip
    for title in ("dreamshaper", "dreamshaper.safetensors", "models/dreamshaper.ckpt [9aba26abdf]",
                  "DreamShaper.safetensors"):  # fmt: skip
        assert mapping.checkpoint_key(service, title) == "dreamshaper"
    assert mapping.checkpoint_key(service, "real-vision [0123456789]") == "Real-Vision"
    with pytest.raises(NotFound, match="Model not found"):
        mapping.checkpoint_key(service, "dreamshaper-xl")
    single = ServiceConfig(name="one", engine="diffusers", options={"checkpoint": "/m/v1-5.safetensors"})
    assert (
        mapping.checkpoint_names(single) == ["v1-5"]
        and mapping.checkpoint_key(single, "v1-5 [abcdef]") is None
    )


def test_lora_tags_become_loras() -> None:
    text, loras = mapping.split_loras("a cat <lora:style-1:0.6>, sitting <lora:grain> <lora:x:bad>")
    assert text == "a cat , sitting"
    assert loras == [
        {"name": "style-1", "weight": 0.6},
        {"name": "grain", "weight": 1.0},
        {"name": "x", "weight": 1.0},
    ]
    assert mapping.split_loras("no tags here") == ("no tags here", [])


def test_requests_map_to_diffusers_inputs() -> None:
    request = mapping.GenerationRequest.model_validate(
        {"prompt": "p", "seed": None, "batch_size": 2, "n_iter": 3, "sampler_index": "k_dpmpp_2m",
         "scheduler": "sgm_uniform", "cfg_scale": 4.5, "restore_faces": True, "unknown": 1}
    )  # fmt: skip
    assert mapping.job_input(request, img2img=False) == {
        "prompt": "p", "negative_prompt": "", "images": 6, "guidance": 4.5, "sampler": "DPM++ 2M",
        "schedule": "SGM Uniform",
    }  # fmt: skip
    unit = {"image": {"image": "aW1n"}, "module": "none", "weight": 1.5, "enabled": True}
    disabled = {"image": "aW1n", "enabled": False}
    control = mapping.GenerationRequest.model_validate(
        {"alwayson_scripts": {"controlnet": {"args": [disabled, unit]}, "ADetailer": {"args": [False]}}}
    )
    mapped = mapping.job_input(control, img2img=False)
    assert (mapped["control_image"], mapped["canny"], mapped["control_scale"]) == ("aW1n", False, 1.5)
    two = mapping.GenerationRequest.model_validate(
        {"alwayson_scripts": {"ControlNet": {"args": [unit, unit]}}}
    )
    with pytest.raises(ValidationError) as error:
        mapping.job_input(two, img2img=False)
    assert error.value.field == "alwayson_scripts.ControlNet.args.1"


def test_png_text_reads_the_parameters_chunk() -> None:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 2, Seed: 1")
    info.add_itxt("comment", "ünïcode")
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="PNG", pnginfo=info)
    assert mapping.png_text(out.getvalue(), "parameters") == "a cat\nSteps: 2, Seed: 1"
    assert mapping.png_text(out.getvalue(), "comment") == "ünïcode"
    assert mapping.png_text(out.getvalue(), "missing") is None and mapping.png_text(b"GIF89a", "x") is None


def test_the_door_names_a_bad_service_when_the_gateway_starts(tmp_path: Path) -> None:
    callable_service = {"name": "echo", "engine": "callable", "options": {"function": "builtins:dict"}}
    for a1111, key in (({"service": "echo"}, "a1111.service"), ({"service": "nope"}, "a1111.service")):
        parsed = parse_config({"services": [callable_service], "a1111": a1111})
        with pytest.raises(ConfigError) as error:
            create_app(parsed, Settings(data_dir=tmp_path, api_key=API_KEY), open_queue("memory://"))
        assert error.value.key == key
    plain = parse_config({"services": [callable_service]})
    app = create_app(plain, Settings(data_dir=tmp_path, api_key=API_KEY), open_queue("memory://"))
    assert not any(getattr(route, "path", "").startswith("/sdapi") for route in app.routes)


def test_controlnet_requests_go_to_a_service_with_a_controlnet() -> None:
    services = [
        {"name": "plain", "engine": "diffusers", "options": {"path": "/m/sd"}},
        {"name": "canny", "engine": "diffusers", "options": {"path": "/m/sd", "controlnet": "/m/cn"}},
    ]
    from swell.gateway.a1111.router import controlnet_service

    parsed = parse_config({"services": services})
    assert main_service(parsed).name == "plain"
    assert getattr(controlnet_service(parsed, main_service(parsed)), "name", None) == "canny"
