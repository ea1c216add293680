"""The a1111 mode: one image job forwarded to an AUTOMATIC1111/Forge web UI started with `--api`.

A job becomes a `/sdapi/v1/txt2img` request (`/img2img` with an init image) in A1111's own terms:
`cfg_scale`, `sampler_name`, `scheduler`, `batch_size`, LoRAs as `<lora:NAME:WEIGHT>` in the prompt,
and the checkpoint as `override_settings.sd_model_checkpoint` kept loaded afterwards
(`override_settings_restore_afterwards: false`), so the next job for the same checkpoint pays no
switch. While it runs, `/sdapi/v1/progress` is polled into `context.progress` (with its live preview
when asked); a cancel posts `/sdapi/v1/interrupt`, after which A1111 answers the request early. The
images come back base64-encoded and are written through `context.results` as files.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
from typing import Any

import httpx

from swell.core.errors import EngineError
from swell.engines.base import JobCancelled, RunContext
from swell.engines.http.spec import A1111Input, HttpOptions
from swell.engines.http.wire import raise_for_status

FORMATS = ((b"\x89PNG\r\n\x1a\n", "png", "image/png"), (b"\xff\xd8\xff", "jpg", "image/jpeg"))
WEBP = ("webp", "image/webp")
CANCEL_POLL = 0.1  # seconds between cancel checks while A1111 works
INTERRUPT_GRACE = 30.0  # seconds to let A1111 answer after an interrupt (so it is idle for the next job)


def prompt_with_loras(job: A1111Input) -> str:
    """The prompt with A1111's LoRA syntax appended for each of the job's LoRAs."""
    tags = [f"<lora:{lora.name}:{lora.weight:g}>" for lora in job.loras]
    return " ".join([job.prompt, *tags]) if tags else job.prompt


def endpoint(job: A1111Input) -> str:
    return "/sdapi/v1/img2img" if job.init_image is not None else "/sdapi/v1/txt2img"


def request_body(job: A1111Input, model: str | None) -> dict[str, Any]:
    """The JSON A1111 gets for `job`: `native` first, Swell's fields over it."""
    body: dict[str, Any] = dict(job.native)
    body.update(prompt=prompt_with_loras(job), negative_prompt=job.negative_prompt)
    optional = {
        "steps": job.steps,
        "cfg_scale": job.guidance,
        "sampler_name": job.sampler,
        "scheduler": job.schedule,
        "width": job.width,
        "height": job.height,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    body.update(seed=-1 if job.seed is None else job.seed, batch_size=job.images, n_iter=1)
    body.update(send_images=True, save_images=False)
    if job.init_image is not None:
        body["init_images"] = [_bare_base64(job.init_image)]
        body["denoising_strength"] = 0.75 if job.strength is None else job.strength
    if model is not None:
        body["override_settings"] = {"sd_model_checkpoint": model}
        body["override_settings_restore_afterwards"] = False
    return body


def _bare_base64(text: str) -> str:
    return text.split(",", 1)[1] if text.startswith("data:") else text


def image_kind(data: bytes) -> tuple[str, str]:
    """The file extension and content type of an image A1111 returned."""
    for magic, extension, content_type in FORMATS:
        if data.startswith(magic):
            return extension, content_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return WEBP
    raise EngineError("the server returned an image that is not a PNG, JPEG or WebP")


def decode_image(text: Any) -> bytes:
    if not isinstance(text, str):
        raise EngineError("the server returned an image that is not a base64 string")
    try:
        return base64.b64decode(_bare_base64(text), validate=True)
    except (binascii.Error, ValueError):
        raise EngineError("the server returned an image that is not valid base64") from None


def parse_info(body: dict[str, Any]) -> dict[str, Any]:
    """A1111's `info`, a JSON string in the response, as an object ({} when absent or not JSON)."""
    info = body.get("info")
    if isinstance(info, str):
        try:
            info = json.loads(info)
        except ValueError:
            return {"text": info}
    return info if isinstance(info, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def result_of(body: Any, job_id: str, context: RunContext, model: str | None) -> dict[str, Any]:
    """The job's result: each image written as a file, with its seed and the server's infotext."""
    if not isinstance(body, dict) or not isinstance(body.get("images"), list):
        raise EngineError("the server's answer has no 'images' list")
    info = parse_info(body)
    seeds = _list(info.get("all_seeds"))
    texts = _list(info.get("infotexts"))
    images = []
    for index, encoded in enumerate(body["images"]):
        data = decode_image(encoded)
        extension, content_type = image_kind(data)
        name = context.results.put(job_id, f"{index}.{extension}", data, content_type)
        entry: dict[str, Any] = {"file": name, "width": info.get("width"), "height": info.get("height")}
        if index < len(seeds):
            entry["seed"] = seeds[index]
        if index < len(texts):
            entry["parameters"] = texts[index]
        images.append(entry)
    return {
        "images": images,
        "seeds": seeds,
        "parameters": texts[0] if texts else info.get("infotext"),
        "info": info,
        "request": body.get("parameters") if isinstance(body.get("parameters"), dict) else {},
        "model": info.get("sd_model_name") or model,
        "sampler": info.get("sampler_name"),
    }


async def generate(
    client: httpx.AsyncClient,
    job_id: str,
    job: A1111Input,
    model: str | None,
    context: RunContext,
    options: HttpOptions,
) -> dict[str, Any] | Exception:
    """Run one job on the server: its result, or JobCancelled when it was cancelled meanwhile."""
    post = asyncio.create_task(client.post(endpoint(job), json=request_body(job, model)))
    cancelled = await follow(client, job_id, context, options, post)
    if cancelled:
        await _answer_after_interrupt(post)
        return JobCancelled(f"job {job_id} was cancelled")
    response = await post
    if context.cancelled(job_id):
        return JobCancelled(f"job {job_id} was cancelled")
    raise_for_status(response)
    return result_of(_json(response), job_id, context, model)


async def follow(
    client: httpx.AsyncClient,
    job_id: str,
    context: RunContext,
    options: HttpOptions,
    post: asyncio.Task[httpx.Response],
) -> bool:
    """Until `post` is answered: poll progress every `progress_every` s, and interrupt on a cancel
    (True then)."""
    loop = asyncio.get_running_loop()
    poll_at, best = loop.time() + options.progress_every, 0.0
    while not post.done():
        await asyncio.wait({post}, timeout=CANCEL_POLL)
        if post.done():
            return False
        if context.cancelled(job_id):
            await _interrupt(client)
            return True
        if loop.time() >= poll_at:
            best = await _progress(client, job_id, context, options, best)
            poll_at = loop.time() + options.progress_every
    return False


async def _progress(
    client: httpx.AsyncClient, job_id: str, context: RunContext, options: HttpOptions, best: float
) -> float:
    """One progress poll, reported when it moved forward; the best fraction so far. A failed poll is
    not the job's failure (the job's own request says how it went)."""
    query = "false" if options.previews else "true"
    try:
        response = await client.get(f"/sdapi/v1/progress?skip_current_image={query}", timeout=10.0)
        body = response.json() if response.is_success else {}
    except (httpx.HTTPError, ValueError):
        return best
    fraction = body.get("progress") if isinstance(body, dict) else None
    if not isinstance(fraction, int | float) or fraction <= best:
        return best
    preview = _preview(body.get("current_image")) if options.previews else None
    state = body.get("state")
    state = state if isinstance(state, dict) else {}
    step, total = state.get("sampling_step"), state.get("sampling_steps")
    message = f"step {step}/{total}" if isinstance(step, int) and isinstance(total, int) else None
    context.progress(job_id, min(float(fraction), 0.99), preview=preview, message=message)
    return float(fraction)


def _preview(text: Any) -> bytes | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        data = decode_image(text)
        image_kind(data)
    except EngineError:
        return None
    return data


async def _interrupt(client: httpx.AsyncClient) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the job ends cancelled either way
        await client.post("/sdapi/v1/interrupt", timeout=10.0)


async def _answer_after_interrupt(post: asyncio.Task[httpx.Response]) -> None:
    """A1111 answers an interrupted request early; wait a little for that (so it is idle for the
    next job), then stop waiting."""
    done, _ = await asyncio.wait({post}, timeout=INTERRUPT_GRACE)
    if not done:
        post.cancel()
    await asyncio.gather(post, return_exceptions=True)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise EngineError(
            f"the server answered {response.status_code} with a body that is not JSON"
        ) from None
