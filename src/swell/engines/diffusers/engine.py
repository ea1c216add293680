"""The `diffusers` engine: one set of Stable Diffusion weights behind four pipelines.

Text-to-image, image-to-image and their ControlNet variants are built with `from_pipe` from one
loaded `StableDiffusionPipeline`, so they share the UNet, VAE and text encoder (no second copy).
Schedulers hold per-call state, so every call gets a fresh one built from the model's scheduler
config for the job's A1111 sampler, and one lock lets one generation run at a time.

A batch is split into calls of jobs with equal `spec.batch_key` (size, steps, sampler, LoRAs...), at
most `max_batch_images` images each; a call runs all its images at once with one CPU generator per
image, seeded `seed, seed + 1, ...` per job (A1111's convention), so an image depends on its own seed
only and the same model, seed and parameters give the same bytes on CPU. Each finished call's jobs are
reported at once. Progress goes out from the step callback; a call whose jobs are all cancelled
stops at its next step.
"""

from __future__ import annotations

import io
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swell.core.errors import ConfigError, DataError, EngineError, MissingExtra, SwellError, ValidationError
from swell.engines.base import JobCancelled, LoadTimings
from swell.engines.diffusers import infotext, samplers
from swell.engines.diffusers.loras import LoraCache, folder_resolver
from swell.engines.diffusers.spec import SPEC, DiffusersInput, DiffusersOptions, decoded_image, mode

if TYPE_CHECKING:
    from PIL import Image

    from swell.engines.base import RunContext
    from swell.engines.spec import EngineEnv

log = logging.getLogger("swell.engines.diffusers")

MAX_DECODED_PIXELS = 4096 * 4096  # an init or control image larger than this is refused before decoding
VERSION = "swell"
# SD 1.x latent -> RGB, a linear fit (A1111's "Approx cheap" preview): no VAE decode per preview.
LATENT_RGB = ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473))
PIPELINES = {
    "txt2img": "StableDiffusionPipeline",
    "img2img": "StableDiffusionImg2ImgPipeline",
    "control": "StableDiffusionControlNetPipeline",
    "control-img2img": "StableDiffusionControlNetImg2ImgPipeline",
}


class _Stop(Exception):
    """Raised in the step callback to end a call whose every job was cancelled."""


@dataclass
class Job:
    """One parsed job of a call, with its per-image seeds."""

    index: int  # its place in the batch
    job_id: str
    input: DiffusersInput
    seeds: list[int]


def random_seed() -> int:
    return secrets.randbelow(2**32)


def image_seeds(seed: int | None, count: int) -> list[int]:
    """`seed, seed + 1, ...` (mod 2**32); a random first seed for None or -1."""
    first = random_seed() if seed is None or seed == -1 else seed
    return [(first + i) % 2**32 for i in range(count)]


class DiffusersEngine:
    """See the module docstring. Built by the worker as `DiffusersEngine(options, env)`."""

    batches = True

    def __init__(self, options: DiffusersOptions, env: EngineEnv) -> None:
        self.options, self.env = options, env
        self.model: str | None = options.name or _default_name(options)
        self._lock = threading.Lock()
        self._base: Any = None
        self._pipes: dict[str, Any] = {}
        self._controlnet: Any = None
        self._scheduler_config: Any = None
        self._loras: LoraCache | None = None
        self.device = "cpu"

    # -- load ------------------------------------------------------------------------------------

    def load(self) -> LoadTimings:
        """Fetch (dataset), load the weights to the device, warm up; returns the phase timings."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        diffusers, torch = _import()
        start = time.perf_counter()
        source = self._source()
        fetched = time.perf_counter()
        self.device = self.options.device or self.env.device or _default_device(torch)
        dtype = _dtype(torch, self.options.dtype, self.device)
        self._base = _load_base(diffusers, self.options, source, dtype).to(self.device)
        self._base.set_progress_bar_config(disable=True)
        self._scheduler_config = self._base.scheduler.config
        if self.options.controlnet is not None:
            self._controlnet = _load_controlnet(diffusers, Path(self.options.controlnet), dtype, self.device)
        self._pipes = {"txt2img": self._base}
        self._loras = self._lora_cache()
        loaded = time.perf_counter()
        if self.options.warmup:
            self._warm_up()
        return LoadTimings(fetch=fetched - start, load=loaded - fetched, warmup=time.perf_counter() - loaded)

    def _source(self) -> Path:
        """The local folder (or single file) the weights come from, fetched through the node cache
        for a dataset."""
        options = self.options
        if options.dataset is None:
            return Path(options.checkpoint or options.path or "")
        from swell.data.datasets import dataset_path

        self.env.dataset(options.dataset)
        root = dataset_path(options.dataset, dict(self.env.datasets), self.env.data_dir)
        return root / options.checkpoint if options.checkpoint else root

    def _lora_cache(self) -> LoraCache | None:
        options = self.options
        if options.loras is not None:
            folder = Path(options.loras)
        elif options.lora_dataset is not None:
            from swell.data.datasets import dataset_path

            self.env.dataset(options.lora_dataset, key="options.lora_dataset")
            folder = dataset_path(options.lora_dataset, dict(self.env.datasets), self.env.data_dir)
        else:
            return None
        if not folder.is_dir():
            raise ConfigError(f"no such folder {folder}", key="options.loras")
        return LoraCache(self._base, folder_resolver(folder), options.lora_cache)

    def _warm_up(self) -> None:
        job = DiffusersInput.model_validate({"prompt": "warm up", "steps": 1, "width": 64, "height": 64})
        self._call([Job(0, "warmup", job, [0])], None)

    # -- run -------------------------------------------------------------------------------------

    def run(self, inputs: list[dict[str, Any]], context: RunContext) -> list[dict[str, Any] | Exception]:
        """Each job's result, or its error in its place (bad input, a missing LoRA, a cancel)."""
        results: list[dict[str, Any] | Exception] = [EngineError("not run")] * len(inputs)
        jobs: list[Job] = []
        for index, (payload, job_id) in enumerate(zip(inputs, context.job_ids, strict=True)):
            try:
                jobs.append(self._parse(index, job_id, payload))
            except SwellError as exc:
                results[index] = exc
        for call in self._calls(jobs, inputs):
            for job, result in zip(call, self._run_call(call, context), strict=True):
                results[job.index] = result
                context.report(job.job_id, result)
        return results

    def _parse(self, index: int, job_id: str, payload: dict[str, Any]) -> Job:
        job = SPEC.parse_input(payload)
        if SPEC.check is not None:
            SPEC.check(job, self.options)
        return Job(index, job_id, job, image_seeds(job.seed, job.images))

    def _calls(self, jobs: list[Job], inputs: list[dict[str, Any]]) -> Iterator[list[Job]]:
        """Jobs grouped by batch key, in order of first appearance, cut at `max_batch_images`."""
        groups: dict[Any, list[Job]] = {}
        for job in jobs:
            groups.setdefault(SPEC.batch_key(inputs[job.index]) if SPEC.batch_key else job.index, []).append(
                job
            )
        for group in groups.values():
            call: list[Job] = []
            for job in group:
                if (
                    call
                    and sum(j.input.images for j in call) + job.input.images > self.options.max_batch_images
                ):
                    yield call
                    call = []
                call.append(job)
            if call:
                yield call

    def _run_call(self, call: list[Job], context: RunContext) -> list[dict[str, Any] | Exception]:
        """One pipeline call's results per job; an error shared by the call in every job's place."""
        try:
            images = self._call(call, context)
        except _Stop:
            return [JobCancelled("cancelled while running") for _ in call]
        except SwellError as exc:
            return [exc for _ in call]
        results: list[dict[str, Any] | Exception] = []
        for job in call:
            if context.cancelled(job.job_id):
                results.append(JobCancelled("cancelled while running"))
                continue
            mine, images = images[: job.input.images], images[job.input.images :]
            results.append(self._result(job, mine, context))
        return results

    def _call(self, call: list[Job], context: RunContext | None) -> list[Image.Image]:
        """Run the pipeline once for every image of `call`'s jobs (which share their settings)."""
        _, torch = _import()
        settings = self._settings(call[0].input)
        kwargs = self._inputs(call, settings)
        generators = [torch.Generator("cpu").manual_seed(seed) for job in call for seed in job.seeds]
        with self._lock:
            pipe = self._pipeline(settings.mode)
            pipe.scheduler = _scheduler(settings.choice, self._scheduler_config)
            if self._loras is not None:
                self._loras.activate(settings.loras)
            elif settings.loras:
                raise ValidationError("this service has no LoRA folder configured", field="input.loras")
            callback = _StepCallback(self, call, context, settings.steps)
            with torch.inference_mode():
                output = pipe(
                    generator=generators, callback_on_step_end=callback, output_type="pil", **kwargs
                )
        return list(output.images)

    def _settings(self, job: DiffusersInput) -> Settings:
        options = self.options
        schedule = job.schedule or (None if job.sampler is not None else options.schedule)
        try:
            choice = samplers.resolve(job.sampler or options.sampler, schedule)
        except ValueError as exc:
            raise ValidationError(str(exc), field="input.sampler") from None
        return Settings(
            mode=mode(job.model_dump()),
            width=job.width or options.width,
            height=job.height or options.height,
            steps=job.steps or options.steps,
            guidance=options.guidance if job.guidance is None else job.guidance,
            choice=choice,
            strength=job.strength if job.strength is not None else 0.75,
            loras=tuple((lora.name, lora.weight) for lora in job.loras),
            control_scale=job.control_scale,
        )

    def _inputs(self, call: list[Job], s: Settings) -> dict[str, Any]:
        """The pipeline's keyword arguments for every image of the call."""
        prompts = [job.input.prompt for job in call for _ in job.seeds]
        negatives = [job.input.negative_prompt for job in call for _ in job.seeds]
        kwargs: dict[str, Any] = {
            "prompt": prompts,
            "negative_prompt": negatives,
            "num_inference_steps": s.steps,
            "guidance_scale": s.guidance,
        }
        size = (s.width, s.height)
        if s.mode in ("img2img", "control-img2img"):
            kwargs["image"] = [
                _image(job.input.init_image, "input.init_image", size) for job in call for _ in job.seeds
            ]
            kwargs["strength"] = s.strength
        else:
            kwargs.update(width=s.width, height=s.height)
        if s.mode.startswith("control"):
            maps = [self._control_map(job.input, size) for job in call for _ in job.seeds]
            kwargs["control_image" if s.mode == "control-img2img" else "image"] = maps
            kwargs["controlnet_conditioning_scale"] = s.control_scale
        return kwargs

    def _control_map(self, job: DiffusersInput, size: tuple[int, int]) -> Image.Image:
        from swell.engines.diffusers.controlnet import canny

        image = _image(job.control_image, "input.control_image", size)
        return canny(image, job.canny_low, job.canny_high) if job.canny else image

    def _pipeline(self, name: str) -> Any:
        """The pipeline for a mode, built from the base one on first use (weights shared)."""
        if name not in self._pipes:
            diffusers, _ = _import()
            cls = getattr(diffusers, PIPELINES[name])
            extra = {"controlnet": self._controlnet} if name.startswith("control") else {}
            if name.startswith("control") and self._controlnet is None:
                raise ValidationError(
                    "this service has no ControlNet configured", field="input.control_image"
                )
            pipe = cls.from_pipe(self._base, **extra)
            pipe.set_progress_bar_config(disable=True)
            self._pipes[name] = pipe
        return self._pipes[name]

    # -- results ---------------------------------------------------------------------------------

    def _result(self, job: Job, images: list[Image.Image], context: RunContext) -> dict[str, Any]:
        settings = self._settings(job.input)
        files: list[dict[str, Any]] = []
        texts: list[str] = []
        for number, (image, seed) in enumerate(zip(images, job.seeds, strict=True)):
            text = self._infotext(job.input, settings, seed)
            name = context.results.put(job.job_id, f"{number}.png", png(image, text), "image/png")
            files.append({"file": name, "seed": seed, "width": image.width, "height": image.height})
            texts.append(text)
        return {
            "images": files,
            "seeds": list(job.seeds),
            "parameters": texts[0],
            "model": self.model,
            "sampler": settings.choice.sampler,
            "schedule": settings.choice.schedule,
        }

    def _infotext(self, job: DiffusersInput, s: Settings, seed: int) -> str:
        fields: dict[str, object] = {
            "Steps": s.steps,
            "Sampler": s.choice.sampler,
            "Schedule type": None if s.choice.schedule == "Automatic" else s.choice.schedule,
            "CFG scale": f"{s.guidance:g}",
            "Seed": seed,
            "Size": f"{s.width}x{s.height}",
            "Model": self.model,
            "Denoising strength": f"{s.strength:g}" if s.mode.endswith("img2img") else None,
            "ControlNet 0": self._controlnet_field(job, s) if s.mode.startswith("control") else None,
            "Version": VERSION,
        }
        prompt = infotext.lora_prompt(job.prompt, list(s.loras))
        return infotext.format_infotext(prompt, job.negative_prompt, fields)

    def _controlnet_field(self, job: DiffusersInput, s: Settings) -> str:
        model = Path(self.options.controlnet or "").name
        module = "canny" if job.canny else "none"
        return f"Module: {module}, Model: {model}, Weight: {s.control_scale:g}"

    def preview(self, latents: Any, index: int) -> bytes:
        """A small PNG of image `index` of `latents` by the linear latent -> RGB fit (no VAE)."""
        from PIL import Image as PILImage

        _, torch = _import()
        factors = torch.tensor(LATENT_RGB, dtype=torch.float32)
        rgb = torch.einsum("lhw,lr->hwr", latents[index].float().cpu(), factors)
        array = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
        buffer = io.BytesIO()
        PILImage.fromarray(array, "RGB").save(buffer, format="PNG")
        return buffer.getvalue()

    # -- unload ----------------------------------------------------------------------------------

    def unload(self) -> None:
        if self._loras is not None:
            self._loras.clear()
        self._pipes.clear()
        self._base = self._controlnet = self._loras = None
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def statistics(self) -> dict[str, Any]:
        """Loaded pipelines and the LoRA cache's counters."""
        stats = self._loras.stats if self._loras is not None else None
        return {
            "model": self.model,
            "pipelines": sorted(self._pipes),
            "loras_loaded": self._loras.loaded if self._loras is not None else [],
            "lora_stats": vars(stats) if stats is not None else {},
        }

    def __repr__(self) -> str:
        return (
            f"DiffusersEngine(model={self.model!r}, device={self.device!r}, pipelines={sorted(self._pipes)})"
        )


@dataclass(frozen=True)
class Settings:
    """What the jobs of one call share (their batch key, with the service's defaults filled in)."""

    mode: str
    width: int
    height: int
    steps: int
    guidance: float
    choice: samplers.Choice
    strength: float
    loras: tuple[tuple[str, float], ...]
    control_scale: float


class _StepCallback:
    """diffusers' `callback_on_step_end`: progress (and previews) per job, and the cancel check."""

    def __init__(
        self, engine: DiffusersEngine, call: Sequence[Job], context: RunContext | None, steps: int
    ) -> None:
        self.engine, self.call, self.context, self.steps = engine, call, context, steps
        self.offsets = [sum(j.input.images for j in call[:i]) for i in range(len(call))]

    def __call__(self, pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        context = self.context
        if context is None:
            return tensors
        live = [i for i, job in enumerate(self.call) if not context.cancelled(job.job_id)]
        if not live:
            raise _Stop
        total = max(1, int(getattr(pipe, "num_timesteps", 0) or self.steps))
        every = self.engine.options.preview_every
        preview = every > 0 and (step + 1) % every == 0 and (step + 1) < total and "latents" in tensors
        for i in live:
            job = self.call[i]
            shot = self.engine.preview(tensors["latents"], self.offsets[i]) if preview else None
            context.progress(job.job_id, min(1.0, (step + 1) / total), preview=shot)
        return tensors


def png(image: Image.Image, parameters: str) -> bytes:
    """The image as PNG bytes with A1111's `parameters` tEXt chunk (deterministic for equal pixels)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _image(text: str | None, field: str, size: tuple[int, int]) -> Image.Image:
    """A job's base64 image decoded to RGB and resized to `size`; ValidationError naming `field`."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    try:
        raw = decoded_image(text or "")
        with PILImage.open(io.BytesIO(raw)) as opened:
            if opened.width * opened.height > MAX_DECODED_PIXELS:
                raise ValueError(f"at most {MAX_DECODED_PIXELS} pixels")
            image = opened.convert("RGB")
    except (ValueError, OSError, UnidentifiedImageError, PILImage.DecompressionBombError) as exc:
        raise ValidationError(f"not a usable image: {exc}", field=field) from None
    return image if image.size == size else image.resize(size, PILImage.Resampling.LANCZOS)


def _scheduler(choice: samplers.Choice, config: Any) -> Any:
    diffusers, _ = _import()
    return getattr(diffusers, choice.scheduler).from_config(config, **choice.kwargs)


def _import() -> tuple[Any, Any]:
    try:
        import diffusers
        import torch
    except ImportError as exc:
        raise MissingExtra("the diffusers engine", "diffusers") from exc
    return diffusers, torch


def _default_device(torch: Any) -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _dtype(torch: Any, name: str, device: str) -> Any:
    if name == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def _default_name(options: DiffusersOptions) -> str:
    """The checkpoint file's stem, else the dataset's name, else the folder's."""
    if options.checkpoint is not None:
        return Path(options.checkpoint).stem
    return options.dataset or Path(options.path or "model").name


def _load_base(diffusers: Any, options: DiffusersOptions, source: Path, dtype: Any) -> Any:
    """The text-to-image pipeline from a diffusers folder or a single-file checkpoint."""
    common: dict[str, Any] = {"dtype": dtype, "safety_checker": None, "requires_safety_checker": False}
    cls = diffusers.StableDiffusionPipeline
    try:
        if options.checkpoint is not None:
            if not source.is_file():
                raise ConfigError(f"no such file {source}", key="options.checkpoint")
            config = Path(options.config or "")
            if not (config / "model_index.json").is_file():
                raise ConfigError(f"{config} is not a diffusers config folder", key="options.config")
            return _load_single_file(diffusers, source, config, dtype)
        if not (source / "model_index.json").is_file():
            raise ConfigError(
                f"{source} is not a diffusers folder (no model_index.json)", key=_source_key(options)
            )
        return cls.from_pretrained(str(source), local_files_only=True, use_safetensors=True, **common)
    except (OSError, ValueError, DataError) as exc:
        raise ConfigError(f"cannot load the model: {exc}", key=_source_key(options)) from None


def _load_single_file(diffusers: Any, checkpoint: Path, config: Path, dtype: Any) -> Any:
    """The pipeline from one original-layout (A1111) checkpoint, its weights read by swell.data's
    loader (one parallel read into one buffer, no pickle) rather than by diffusers opening the file;
    diffusers' own single-file converters map the keys of each part, with the configs, tokenizer
    and scheduler from the local `config` folder (nothing is fetched from a hub)."""
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTokenizer

    from swell.data import load_safetensors

    state = load_safetensors(checkpoint, device="cpu")
    part: dict[str, Any] = {"config": str(config), "torch_dtype": dtype, "local_files_only": True}
    unet = diffusers.UNet2DConditionModel.from_single_file(state, subfolder="unet", **part)
    vae = diffusers.AutoencoderKL.from_single_file(state, subfolder="vae", **part)
    text_encoder = create_diffusers_clip_model_from_ldm(
        CLIPTextModel, state, subfolder="text_encoder", **part
    )
    del state  # the parts hold their own tensors now: the file's buffer goes
    scheduler_config = diffusers.DDIMScheduler.load_config(str(config / "scheduler"))
    scheduler = getattr(diffusers, scheduler_config["_class_name"]).from_config(scheduler_config)
    return diffusers.StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(str(config / "tokenizer"), local_files_only=True),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _source_key(options: DiffusersOptions) -> str:
    if options.checkpoint is not None:
        return "options.checkpoint"
    return "options.dataset" if options.dataset is not None else "options.path"


def _load_controlnet(diffusers: Any, folder: Path, dtype: Any, device: str) -> Any:
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"{folder} is not a ControlNetModel folder (no config.json)", key="options.controlnet"
        )
    try:
        net = diffusers.ControlNetModel.from_pretrained(str(folder), dtype=dtype, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the ControlNet: {exc}", key="options.controlnet") from None
    return net.to(device)
