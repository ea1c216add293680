"""The `diffusers` engine's light spec: options, one job's input, units of work, batch key. No torch.

Checked when swell.yaml loads (options) and by the gateway at submit (input, then `check` against the
service's options), so a bad sampler name or an image size over the service's limit is refused with
the field named before a worker ever sees the job.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Hashable, Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from swell.core.errors import ValidationError
from swell.engines.diffusers import samplers
from swell.engines.spec import EngineSpec, Input, Options, device_option

MIN_SIDE, MAX_SIDE = 64, 2048
MAX_IMAGES = 16
MAX_STEPS = 150
MAX_PROMPT_CHARS = 20_000
MAX_LORAS = 8
MAX_IMAGE_BYTES = 32 * 1024 * 1024  # the decoded bytes of one init or control image
LORA_NAME = r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,127}$"  # a file stem: no path separators, no leading dot
PNG, JPEG, WEBP = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF"
SIZE_TILE = 512 * 512  # units: an image's area in SD 1.5's native 512x512 tiles


def _sampler_choice(sampler: str, schedule: str | None) -> None:
    samplers.resolve(sampler, schedule)


class DiffusersOptions(Options):
    """A Stable Diffusion service. Weights from one of `path` (a diffusers folder), `dataset` (the
    same, through the node cache) or `checkpoint` (one .safetensors file, with `config` a local
    diffusers folder of its configs: nothing is fetched from a hub)."""

    path: str | None = None
    dataset: str | None = None
    checkpoint: str | None = None  # a file; with `dataset`, a path inside the dataset
    config: str | None = None  # for `checkpoint`: a local folder holding the pipeline's config files
    name: str | None = None  # the model's name in results and infotext (default: from the source)
    controlnet: str | None = None  # a local ControlNetModel folder: enables `control_image`
    loras: str | None = None  # a local folder of <name>.safetensors LoRA files
    lora_dataset: str | None = None  # or a dataset of them
    lora_cache: Annotated[int, Field(ge=1, le=64)] = 8  # adapters kept loaded in the pipeline
    max_loras: Annotated[int, Field(ge=0, le=MAX_LORAS)] = 4  # adapters per job
    device: str | None = None  # cpu, cuda, cuda:N, mps, xpu; default: cuda when there is one
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # auto: float16 on cuda
    sampler: str = "DPM++ 2M"
    schedule: str = "Automatic"
    steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] = 25
    guidance: Annotated[float, Field(ge=0, le=50)] = 7.0
    width: Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8)] = 512
    height: Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8)] = 512
    max_side: Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE)] = MAX_SIDE
    max_images: Annotated[int, Field(ge=1, le=MAX_IMAGES)] = 4  # per job
    max_batch_images: Annotated[int, Field(ge=1, le=64)] = 8  # per pipeline call, across jobs
    max_steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] = MAX_STEPS
    preview_every: Annotated[int, Field(ge=0, le=MAX_STEPS)] = 0  # steps between previews; 0: none
    warmup: bool = True  # one 1-step generation at load, so the first job pays no first-call costs

    @field_validator("device")
    @classmethod
    def _device(cls, device: str | None) -> str | None:
        return device_option(device)

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, sampler: str) -> str:
        samplers.resolve(sampler)
        return sampler

    @model_validator(mode="after")
    def _sources(self) -> DiffusersOptions:
        if self.path is not None and self.dataset is not None:
            raise ValueError("give 'path' or 'dataset', not both")
        if self.path is None and self.dataset is None and self.checkpoint is None:
            raise ValueError("give one of 'path', 'dataset' or 'checkpoint'")
        if self.checkpoint is not None and self.path is not None:
            raise ValueError("give 'path' or 'checkpoint', not both")
        if self.checkpoint is not None and self.config is None:
            raise ValueError("'checkpoint' needs 'config', a local folder of the pipeline's configs")
        if self.loras is not None and self.lora_dataset is not None:
            raise ValueError("give 'loras' or 'lora_dataset', not both")
        _sampler_choice(self.sampler, self.schedule)
        return self


class Lora(Input):
    name: Annotated[str, Field(pattern=LORA_NAME)]
    weight: Annotated[float, Field(ge=-4, le=4)] = 1.0


def decoded_image(text: str) -> bytes:
    """The bytes of a base64 (or data: URL) PNG, JPEG or WebP image; ValueError saying what is wrong."""
    data = text.split(",", 1)[1] if text.startswith("data:") else text
    if len(data) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise ValueError(f"at most {MAX_IMAGE_BYTES} bytes")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be a base64 PNG, JPEG or WebP image") from None
    if not raw.startswith((PNG, JPEG, WEBP)):
        raise ValueError("must be a PNG, JPEG or WebP image")
    return raw


class DiffusersInput(Input):
    """One job: `images` images of `width` x `height` from `prompt`; from `init_image` (image-to-image,
    `strength` of denoising) and/or guided by `control_image` (ControlNet) where given."""

    prompt: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)] = ""
    negative_prompt: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)] = ""
    steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] | None = None
    guidance: Annotated[float, Field(ge=0, le=50)] | None = None
    sampler: str | None = None
    schedule: str | None = None
    seed: Annotated[int, Field(ge=-1, le=2**32 - 1)] | None = None  # -1 or none: random (reported)
    width: Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8)] | None = None
    height: Annotated[int, Field(ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8)] | None = None
    images: Annotated[int, Field(ge=1, le=MAX_IMAGES)] = 1
    init_image: str | None = None
    strength: Annotated[float, Field(gt=0, le=1)] | None = None  # denoising strength, with init_image
    loras: Annotated[list[Lora], Field(default_factory=list, max_length=MAX_LORAS)]
    control_image: str | None = None
    control_scale: Annotated[float, Field(ge=0, le=2)] = 1.0
    canny: bool = True  # turn control_image into its canny edges first (False: it already is a map)
    canny_low: Annotated[int, Field(ge=0, le=255)] = 100
    canny_high: Annotated[int, Field(ge=0, le=255)] = 200

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, sampler: str | None) -> str | None:
        if sampler is not None:
            samplers.resolve(sampler)
        return sampler

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, schedule: str | None) -> str | None:
        if schedule is not None and schedule not in samplers.SCHEDULES:
            raise ValueError(f"unknown schedule type {schedule!r} (known: {', '.join(samplers.SCHEDULES)})")
        return schedule

    @field_validator("init_image")
    @classmethod
    def _init_image(cls, text: str | None) -> str | None:
        if text is not None:
            decoded_image(text)
        return text

    @field_validator("control_image")
    @classmethod
    def _control_image(cls, text: str | None) -> str | None:
        if text is not None:
            decoded_image(text)
        return text

    @model_validator(mode="after")
    def _consistent(self) -> DiffusersInput:
        if self.strength is not None and self.init_image is None:
            raise ValueError("'strength' needs 'init_image'")
        if self.canny_low > self.canny_high:
            raise ValueError("'canny_low' must not exceed 'canny_high'")
        if len({lora.name for lora in self.loras}) != len(self.loras):
            raise ValueError("each LoRA may be named once")
        return self


def check(job: DiffusersInput, options: DiffusersOptions) -> None:
    """The input against the service's limits and features; ValidationError naming the field."""
    for side in ("width", "height"):
        if (getattr(job, side) or 0) > options.max_side:
            raise ValidationError(f"at most {options.max_side} on this service", field=f"input.{side}")
    if job.images > options.max_images:
        raise ValidationError(f"at most {options.max_images} images per job", field="input.images")
    if (job.steps or 0) > options.max_steps:
        raise ValidationError(f"at most {options.max_steps} steps on this service", field="input.steps")
    if job.control_image is not None and options.controlnet is None:
        raise ValidationError("this service has no ControlNet configured", field="input.control_image")
    if job.loras and options.loras is None and options.lora_dataset is None:
        raise ValidationError("this service has no LoRA folder configured", field="input.loras")
    if len(job.loras) > options.max_loras:
        raise ValidationError(f"at most {options.max_loras} LoRAs per job", field="input.loras")
    try:
        samplers.resolve(job.sampler or options.sampler, job.schedule or _default_schedule(job, options))
    except ValueError as exc:
        raise ValidationError(str(exc), field="input.schedule" if job.schedule else "input.sampler") from None


def _default_schedule(job: DiffusersInput, options: DiffusersOptions) -> str | None:
    """A job that names its own sampler gets that sampler's own schedule unless it names one."""
    return None if job.sampler is not None else options.schedule


def units(payload: Mapping[str, Any]) -> dict[str, float]:
    """Denoising steps run (img2img runs `steps x strength`), images, and the area in 512x512 tiles
    (service defaults unknown here count as 512x512 and 25 steps)."""
    steps = float(payload.get("steps") or 25)
    if payload.get("init_image"):
        steps = max(1.0, steps * float(payload.get("strength") or 0.75))
    area = float(payload.get("width") or 512) * float(payload.get("height") or 512) / SIZE_TILE
    return {"steps": steps, "images": float(payload.get("images") or 1), "area": area}


def mode(payload: Mapping[str, Any]) -> str:
    """txt2img, img2img, control or control-img2img: which pipeline runs the job."""
    base = "img2img" if payload.get("init_image") else "txt2img"
    if payload.get("control_image"):
        return "control" if base == "txt2img" else "control-img2img"
    return base


def batch_key(payload: Mapping[str, Any]) -> Hashable:
    """Jobs with equal keys run in one pipeline call: same mode, size, steps, sampler, schedule,
    guidance, strength, control scale and LoRAs (prompts, seeds and images may differ)."""
    loras = tuple(
        sorted((str(x.get("name")), float(x.get("weight", 1.0))) for x in payload.get("loras") or [])
    )
    keys = ("width", "height", "steps", "sampler", "schedule", "guidance", "strength", "control_scale")
    return (mode(payload), *(_hashable(payload.get(k)) for k in keys), loras)


def _hashable(value: Any) -> Hashable:
    return value if isinstance(value, str | int | float | bool | None) else repr(value)


def lora_file_name(name: str) -> str:
    """The file a LoRA name refers to in a LoRA folder."""
    if not re.fullmatch(LORA_NAME, name):
        raise ValidationError(f"bad LoRA name {name!r}", field="input.loras")
    return f"{name}.safetensors"


SPEC = EngineSpec(
    name="diffusers",
    factory="swell.engines.diffusers.engine:DiffusersEngine",
    Options=DiffusersOptions,
    Input=DiffusersInput,
    batches=True,
    units=units,
    extra="diffusers",
    batch_key=batch_key,
    check=check,
    description="Stable Diffusion text-to-image and image-to-image (LoRA, ControlNet) with diffusers",
)
