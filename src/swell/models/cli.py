"""`swell models ...`: write tiny random models (their outputs are noise) for tests and CPU demos."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from swell.core.errors import SwellError

app = typer.Typer(name="models", help="Tiny random models in real on-disk layouts.", no_args_is_help=True)

KIND_HELP = "sd (a diffusers SD 1.x folder), controlnet, lora (PEFT safetensors files) or llm."


@app.callback()
def models() -> None:
    """Tiny random models in real on-disk layouts (their outputs are noise)."""


@app.command("make-tiny")
def make_tiny_command(
    directory: Annotated[Path, typer.Argument(help="Where to write the model (created).")],
    kind: Annotated[str, typer.Option("--kind", help=KIND_HELP)],
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random weights.")] = 0,
    count: Annotated[int, typer.Option("--count", help="For --kind lora: how many adapters.")] = 1,
    single_file: Annotated[
        bool,
        typer.Option(
            "--single-file",
            help="For --kind sd: also write the weights as one original-layout checkpoint "
            "(tiny-sd.safetensors, as A1111 keeps them) beside the folder.",
        ),
    ] = False,
    hidden_size: Annotated[
        int | None, typer.Option("--hidden-size", help="For --kind llm: the width (default 64).")
    ] = None,
    layers: Annotated[
        int | None, typer.Option("--layers", help="For --kind llm: layers (default 2).")
    ] = None,
    context: Annotated[
        int | None, typer.Option("--context", help="For --kind llm: the most positions (default 1024).")
    ] = None,
) -> None:
    """Write a tiny randomly initialised model of KIND into DIRECTORY, downloading nothing.

    The weights are random: the outputs are noise, never a model's quality. They exist so that the
    real engines run in well under a second per job on a CPU (tests, demos, CI)."""
    from swell.models.tiny import make_tiny

    params: dict[str, object] = {}
    if kind == "lora":
        params["count"] = count
    if kind == "sd" and single_file:
        params["single_file"] = True
    if kind == "llm":
        shape = {"hidden_size": hidden_size, "layers": layers, "context": context}
        params |= {key: value for key, value in shape.items() if value is not None}
    try:
        path = make_tiny(kind, directory, seed=seed, **params)
    except SwellError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote a tiny {kind} model (random weights: outputs are noise) to {path}")
