"""AUTOMATIC1111 web UI requests into `diffusers` job inputs, and finished jobs into its answers.

Pure: no I/O, no HTTP. The request fields are the web UI's (`StableDiffusionTxt2ImgProcessingAPI`
and its img2img twin, as webuiapi and the bots send them); what Swell honours:

    prompt, negative_prompt       as they are; `<lora:NAME:WEIGHT>` tags become the job's `loras`
    steps, cfg_scale, width, height, seed (-1: random), denoising_strength (img2img)
    sampler_name | sampler_index  A1111 names, legacy "DPM++ 2M Karras" and k-diffusion aliases
    scheduler                     its names ("karras") or labels ("Karras")
    batch_size x n_iter           the job's `images` (seeds seed, seed+1, ..., as the web UI's)
    init_images                   one image, raw base64 or a data: URL
    override_settings.sd_model_checkpoint   the job's checkpoint (`model`)
    alwayson_scripts.ControlNet.args        one enabled unit: image, module none|canny, weight,
                                            threshold_a/b as canny's low/high
    send_images, include_init_images, force_task_id

Fields left out take the service's defaults (not the web UI's, so an operator's choice of steps or
sampler holds). Unknown fields, and the web UI's knobs that have no diffusers meaning (eta, s_churn,
restore_faces, tiling, styles, ...), are ignored; what would change the image and cannot be done
(hires fix, a selectable script, an inpainting mask, several init images, two ControlNet units, an
enabled always-on script other than ControlNet, a ControlNet module other than none and canny) is
refused with a 422 naming the field.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from swell.core.config import ServiceConfig
from swell.core.errors import NotFound, ValidationError
from swell.engines.diffusers import samplers
from swell.engines.diffusers.infotext import parse_infotext

LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([^:>]*))?(?::[^>]*)?>")
HASH_SUFFIX = re.compile(r"\s*\[[0-9A-Fa-f]{6,64}\]$")
CHECKPOINT_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".bin")
CONTROLNET_SCRIPT = "controlnet"
CONTROLNET_MODULES = ("none", "canny")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# k-diffusion's aliases, as the web UI's /sdapi/v1/samplers lists them (old clients send these).
ALIASES: dict[str, list[str]] = {
    "Euler": ["k_euler"],
    "Euler a": ["k_euler_a", "k_euler_ancestral"],
    "Heun": ["k_heun"],
    "LMS": ["k_lms"],
    "DPM2": ["k_dpm_2"],
    "DPM2 a": ["k_dpm_2_a"],
    "DPM++ 2M": ["k_dpmpp_2m"],
    "DPM++ 2M SDE": ["k_dpmpp_2m_sde"],
    "DPM++ SDE": ["k_dpmpp_sde"],
    "DDIM": ["ddim"],
    "PLMS": ["plms"],
    "UniPC": ["unipc"],
    "DEIS": ["deis"],
    "LCM": ["k_lcm"],
}
BY_ALIAS = {alias: name for name, aliases in ALIASES.items() for alias in aliases}
# A1111's scheduler names (what /sdapi/v1/schedulers calls `name`) for the engine's schedule types.
SCHEDULER_NAMES = {label: label.lower().replace(" ", "_") for label in samplers.SCHEDULES}
SCHEDULER_LABELS = {name: label for label, name in SCHEDULER_NAMES.items()}
# Where a job input's field came from, for errors in the request's own terms.
REQUEST_FIELDS = {
    "input.guidance": "cfg_scale",
    "input.sampler": "sampler_name",
    "input.schedule": "scheduler",
    "input.images": "batch_size",
    "input.init_image": "init_images",
    "input.strength": "denoising_strength",
    "input.control_image": "alwayson_scripts.ControlNet.args.0.image",
    "input.control_scale": "alwayson_scripts.ControlNet.args.0.weight",
    "input.canny_low": "alwayson_scripts.ControlNet.args.0.threshold_a",
    "input.canny_high": "alwayson_scripts.ControlNet.args.0.threshold_b",
    "model": "override_settings.sd_model_checkpoint",
    "service": "override_settings.sd_model_checkpoint",
}


class GenerationRequest(BaseModel):
    """The fields of the web UI's txt2img and img2img requests that Swell reads; others are kept
    (for `parameters`) and otherwise ignored."""

    model_config = ConfigDict(extra="allow")

    prompt: str = ""
    negative_prompt: str = ""
    seed: int | None = -1  # clients send null for "random" too
    subseed: int | None = -1
    batch_size: int | None = 1
    n_iter: int | None = 1
    steps: int | None = None
    cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None
    sampler_name: str | None = None
    sampler_index: str | None = None
    scheduler: str | None = None
    denoising_strength: float | None = None
    enable_hr: bool | None = False
    script_name: str | None = None
    override_settings: dict[str, Any] | None = None
    alwayson_scripts: dict[str, Any] | None = None
    send_images: bool = True
    force_task_id: str | None = None
    init_images: list[str] | None = None
    mask: str | None = None
    include_init_images: bool = False

    def checkpoint(self) -> str | None:
        """The checkpoint the request names, if any."""
        name = (self.override_settings or {}).get("sd_model_checkpoint")
        return name if isinstance(name, str) and name else None

    def controlnet_units(self) -> list[dict[str, Any]]:
        """The enabled ControlNet units that carry an image."""
        units = []
        for index, unit in enumerate(_script_args(self.alwayson_scripts, CONTROLNET_SCRIPT)):
            if isinstance(unit, dict) and unit.get("enabled", True) is not False and _unit_image(unit):
                units.append({**unit, "_index": index})
        return units


# -- requests into job inputs -------------------------------------------------------------------------


def job_input(request: GenerationRequest, *, img2img: bool) -> dict[str, Any]:
    """The `diffusers` job input for a web UI request; ValidationError naming the request's field
    for what cannot be honoured."""
    _refuse_unsupported(request, img2img)
    prompt, loras = split_loras(request.prompt)
    payload: dict[str, Any] = {"prompt": prompt, "negative_prompt": request.negative_prompt}
    batch, rounds = _positive(request.batch_size, "batch_size"), _positive(request.n_iter, "n_iter")
    payload["images"] = batch * rounds
    optional = {
        "steps": request.steps,
        "guidance": request.cfg_scale,
        "width": request.width,
        "height": request.height,
        "sampler": sampler_name(request.sampler_name or request.sampler_index),
        "schedule": schedule_label(request.scheduler),
    }
    payload |= {key: value for key, value in optional.items() if value is not None}
    if request.seed is not None and request.seed != -1:
        payload["seed"] = request.seed
    if loras:
        payload["loras"] = loras
    if img2img:
        payload |= _img2img(request)
    units = request.controlnet_units()
    if units:
        payload |= control_input(units)
    return payload


def _refuse_unsupported(request: GenerationRequest, img2img: bool) -> None:
    if request.enable_hr:
        raise ValidationError("the hires fix (enable_hr) is not supported", field="enable_hr")
    if request.script_name:
        raise ValidationError(f"scripts are not supported ({request.script_name!r})", field="script_name")
    if img2img and request.mask:
        raise ValidationError("inpainting masks are not supported", field="mask")
    for name, args in (request.alwayson_scripts or {}).items():
        if name.lower() != CONTROLNET_SCRIPT and _enabled(args):
            raise ValidationError(
                f"the always-on script {name!r} is not supported (only ControlNet is)",
                field=f"alwayson_scripts.{name}",
            )


def _enabled(script: Any) -> bool:
    """Whether an always-on script's entry asks for it to run (`{"args": [False]}` does not)."""
    args = script.get("args") if isinstance(script, dict) else None
    if not isinstance(args, list) or not args:
        return False
    first = args[0]
    return not (first is False or (isinstance(first, dict) and first.get("enabled") is False))


def _positive(value: int | None, field: str) -> int:
    if value is None:
        return 1
    if value < 1:
        raise ValidationError("must be at least 1", field=field)
    return value


def _img2img(request: GenerationRequest) -> dict[str, Any]:
    images = request.init_images or []
    if not images:
        raise ValidationError("img2img needs one image in init_images", field="init_images")
    if len(images) > 1:
        raise ValidationError("send one init image per request", field="init_images")
    strength = 0.75 if request.denoising_strength is None else request.denoising_strength
    return {"init_image": images[0], "strength": strength}


def control_input(units: list[dict[str, Any]]) -> dict[str, Any]:
    """The job's ControlNet fields from the request's one enabled unit."""
    if len(units) > 1:
        where = f"alwayson_scripts.ControlNet.args.{units[1]['_index']}"
        raise ValidationError("one ControlNet unit per request is supported", field=where)
    unit = units[0]
    where = f"alwayson_scripts.ControlNet.args.{unit['_index']}"
    module = str(unit.get("module") or "none").lower()
    if module not in CONTROLNET_MODULES:
        known = ", ".join(CONTROLNET_MODULES)
        raise ValidationError(f"module {module!r} is not supported (known: {known})", field=f"{where}.module")
    payload: dict[str, Any] = {"control_image": _unit_image(unit), "canny": module == "canny"}
    if unit.get("weight") is not None:
        payload["control_scale"] = unit["weight"]
    if module == "canny":
        payload |= {k: int(unit[a]) for k, a in (("canny_low", "threshold_a"), ("canny_high", "threshold_b"))
                    if isinstance(unit.get(a), int | float) and unit[a] >= 0}  # fmt: skip
    return payload


def _unit_image(unit: dict[str, Any]) -> str | None:
    """A unit's image: `image` (a string, or `{"image": ...}`), or the older `input_image`."""
    image = unit.get("image") or unit.get("input_image")
    if isinstance(image, dict):
        image = image.get("image")
    return image if isinstance(image, str) and image else None


def _script_args(scripts: Mapping[str, Any] | None, name: str) -> list[Any]:
    for key, script in (scripts or {}).items():
        if key.lower() == name and isinstance(script, dict) and isinstance(script.get("args"), list):
            return list(script["args"])
    return []


def split_loras(prompt: str) -> tuple[str, list[dict[str, Any]]]:
    """The prompt without its `<lora:NAME:WEIGHT>` tags, and those LoRAs (weight 1 when absent)."""
    loras: dict[str, float] = {}
    for name, weight in LORA_TAG.findall(prompt):
        try:
            loras[name.strip()] = float(weight) if weight else 1.0
        except ValueError:
            loras[name.strip()] = 1.0
    text = " ".join(LORA_TAG.sub(" ", prompt).split()) if loras else prompt
    return text, [{"name": name, "weight": weight} for name, weight in loras.items()]


def sampler_name(name: str | None) -> str | None:
    """The engine's name for a sampler the request names (an alias mapped; None when absent)."""
    if not name:
        return None
    return BY_ALIAS.get(name, name)


def schedule_label(name: str | None) -> str | None:
    """The engine's schedule type for the web UI's scheduler name or label (unknown ones pass through,
    for the engine's spec to refuse by name)."""
    if not name:
        return None
    if name in samplers.SCHEDULES:
        return name
    return SCHEDULER_LABELS.get(name.lower(), name)


def request_field(field: str | None) -> str | None:
    """A job input's field named as the web UI request names it."""
    if field is None:
        return None
    return REQUEST_FIELDS.get(field, field.removeprefix("input."))


# -- checkpoints ----------------------------------------------------------------------------------------


def checkpoint_names(service: ServiceConfig) -> list[str]:
    """The checkpoints a diffusers service serves: its `models` keys, or its one model's name (as the
    engine names it: `name`, else the checkpoint file's stem, the dataset's or the folder's name)."""
    if service.models:
        return list(service.models)
    options = service.options
    if options.get("name"):
        return [str(options["name"])]
    if options.get("checkpoint"):
        return [Path(str(options["checkpoint"])).stem]
    return [str(options.get("dataset") or Path(str(options.get("path") or "model")).name)]


def checkpoint_key(service: ServiceConfig, title: str) -> str | None:
    """The job `model` for a checkpoint the web UI names (`name`, `name.safetensors`, `dir/name.ckpt
    [hash]`): a key of the service's `models`, or None for a service of one model. NotFound (the web
    UI's "Model not found") for a name the service does not serve."""
    names = checkpoint_names(service)
    wanted = bare_checkpoint(title)
    found = next((n for n in names if n == wanted), None)
    found = found or next((n for n in names if n.lower() == wanted.lower()), None)
    if found is None:
        raise NotFound(
            f"Model not found: {title!r} (known: {', '.join(names)})",
            field="override_settings.sd_model_checkpoint",
        )
    return found if service.models else None


def bare_checkpoint(title: str) -> str:
    """`dir/name.safetensors [0123abcd]` -> `name`."""
    name = HASH_SUFFIX.sub("", title.strip())
    name = re.split(r"[\\/]", name)[-1]
    for extension in CHECKPOINT_EXTENSIONS:
        if name.lower().endswith(extension):
            return name[: -len(extension)]
    return name


def sd_models(service: ServiceConfig) -> list[dict[str, Any]]:
    """`/sdapi/v1/sd-models`: no hashes (Swell names checkpoints; it never hashes the files)."""
    return [
        {"title": name, "model_name": name, "hash": None, "sha256": None, "filename": name, "config": None}
        for name in checkpoint_names(service)
    ]


# -- tables -----------------------------------------------------------------------------------------------


def sampler_list() -> list[dict[str, Any]]:
    """`/sdapi/v1/samplers`: the engine's sampler table, with each one's automatic schedule."""
    items = []
    for name, sampler in samplers.SAMPLERS.items():
        options = (
            {} if sampler.automatic == "Automatic" else {"scheduler": SCHEDULER_NAMES[sampler.automatic]}
        )
        items.append({"name": name, "aliases": ALIASES.get(name, []), "options": options})
    return items


def scheduler_list() -> list[dict[str, Any]]:
    """`/sdapi/v1/schedulers`: the engine's schedule types."""
    return [
        {"name": SCHEDULER_NAMES[label], "label": label, "aliases": None, "default_rho": -1.0,
         "need_inner_model": False}
        for label in samplers.SCHEDULES
    ]  # fmt: skip


# -- finished jobs into answers ---------------------------------------------------------------------------


def png_text(data: bytes, key: str) -> str | None:
    """The `key` tEXt (or iTXt, uncompressed) chunk of a PNG, or None; reads no pixels."""
    if not data.startswith(PNG_MAGIC):
        return None
    offset = len(PNG_MAGIC)
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        body = data[offset + 8 : offset + 8 + length]
        offset += 12 + length
        if kind == b"IEND":
            return None
        found = _text_chunk(kind, body, key)
        if found is not None:
            return found
    return None


def _text_chunk(kind: bytes, body: bytes, key: str) -> str | None:
    name, _, rest = body.partition(b"\x00")
    if name.decode("latin-1") != key:
        return None
    if kind == b"tEXt":
        return rest.decode("latin-1")
    if kind == b"zTXt":
        return zlib.decompress(rest[1:]).decode("latin-1")
    if kind == b"iTXt" and rest[:1] == b"\x00":  # not compressed
        text = rest[2:].split(b"\x00", 2)[-1]
        return text.decode("utf-8")
    return None


def generation_answer(
    request: GenerationRequest, result: dict[str, Any], images: list[bytes], *, job_id: str, created_at: float
) -> dict[str, Any]:
    """The web UI's answer: `images` (base64 PNGs), `parameters` (the request), `info` (a JSON string)."""
    texts = [png_text(data, "parameters") or str(result.get("parameters") or "") for data in images]
    if not texts and result.get("parameters"):
        texts = [str(result["parameters"])]
    parameters = request.model_dump()
    if not request.include_init_images:
        parameters.update(init_images=None, mask=None)
    info = generation_info(request, result, texts, job_id=job_id, created_at=created_at)
    encoded = [base64.b64encode(data).decode() for data in images] if request.send_images else []
    return {"images": encoded, "parameters": parameters, "info": json.dumps(info)}


def generation_info(
    request: GenerationRequest, result: dict[str, Any], texts: list[str], *, job_id: str, created_at: float
) -> dict[str, Any]:
    """`info` as the web UI's `Processed.js()` writes it, from what ran (the infotext), not from what
    was asked."""
    seeds = [int(seed) for seed in result.get("seeds") or []]
    count = len(seeds) or 1
    _, _, fields = parse_infotext(texts[0]) if texts else ("", "", {})
    width, height = _size(fields.get("Size"))
    extra = {"Schedule type": fields["Schedule type"]} if "Schedule type" in fields else {}
    return {
        "prompt": request.prompt,
        "all_prompts": [request.prompt] * count,
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": [request.negative_prompt] * count,
        "seed": seeds[0] if seeds else -1,
        "all_seeds": seeds,
        "subseed": -1 if request.subseed is None else request.subseed,
        "all_subseeds": [-1 if request.subseed is None else request.subseed] * count,
        "subseed_strength": 0,
        "width": width,
        "height": height,
        "sampler_name": result.get("sampler") or fields.get("Sampler"),
        "cfg_scale": _number(fields.get("CFG scale")),
        "steps": _number(fields.get("Steps")),
        "batch_size": request.batch_size or 1,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": result.get("model") or fields.get("Model"),
        "sd_model_hash": None,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": _number(fields.get("Denoising strength")),
        "extra_generation_params": extra,
        "index_of_first_image": 0,
        "infotexts": texts,
        "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.gmtime(created_at)),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "version": fields.get("Version"),
        "job_id": job_id,
    }


def _size(text: str | None) -> tuple[int | None, int | None]:
    width, _, height = (text or "").partition("x")
    return (int(width), int(height)) if width.isdigit() and height.isdigit() else (None, None)


def _number(text: str | None) -> int | float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else value


__all__ = [
    "GenerationRequest",
    "checkpoint_key",
    "checkpoint_names",
    "generation_answer",
    "job_input",
    "png_text",
    "sampler_list",
    "scheduler_list",
    "sd_models",
]
