"""The peer of bench/a1111.py: a minimal AUTOMATIC1111-style server, as the web UI serves its API.

One global diffusers pipeline, one lock: `POST /sdapi/v1/txt2img` waits for the lock, generates
`batch_size` images with seeds `seed, seed + 1, ...` (Euler a, the web UI's default), writes each as a
PNG with the web UI's `parameters` infotext and answers `{"images", "parameters", "info"}` with
`info` a JSON string holding the seeds, as the web UI does. Requests are served by uvicorn's thread
pool (a sync route), so concurrent clients queue on the lock exactly as they do on the web UI's
`queue_lock`.

    .venv/bin/python bench/a1111_peer.py --model DIR --port 7860 [--threads N] [--device cpu]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import threading
from typing import Any

import torch
import uvicorn
from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline
from fastapi import FastAPI
from PIL import PngImagePlugin
from pydantic import BaseModel, ConfigDict


class Txt2Img(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    batch_size: int = 1


def build(model: str, device: str) -> FastAPI:
    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    lock = threading.Lock()
    app = FastAPI()

    @app.post("/sdapi/v1/txt2img")
    def txt2img(body: Txt2Img) -> dict[str, Any]:
        seeds = [body.seed + i for i in range(body.batch_size)]
        with lock:
            generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
            images = pipe(
                prompt=[body.prompt] * len(seeds),
                negative_prompt=[body.negative_prompt] * len(seeds),
                num_inference_steps=body.steps,
                guidance_scale=body.cfg_scale,
                width=body.width,
                height=body.height,
                generator=generators,
            ).images
        texts = [infotext(body, seed) for seed in seeds]
        encoded = [png_base64(image, text) for image, text in zip(images, texts, strict=True)]
        info = {"seed": seeds[0], "all_seeds": seeds, "infotexts": texts}
        return {"images": encoded, "parameters": body.model_dump(), "info": json.dumps(info)}

    return app


def infotext(body: Txt2Img, seed: int) -> str:
    fields = f"Steps: {body.steps}, Sampler: Euler a, CFG scale: {body.cfg_scale:g}, Seed: {seed}"
    return (
        f"{body.prompt}\nNegative prompt: {body.negative_prompt}\n{fields}, Size: {body.width}x{body.height}"
    )


def png_base64(image: Any, text: str) -> str:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info)
    return base64.b64encode(out.getvalue()).decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    uvicorn.run(build(args.model, args.device), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
