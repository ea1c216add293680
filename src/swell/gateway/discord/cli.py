"""`swell discord ...`: the Discord door's commands."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer

from swell.core.errors import SwellError

app = typer.Typer(name="discord", help="The Discord interactions door.", no_args_is_help=True)


@app.callback()
def discord() -> None:
    """The Discord interactions door."""


@app.command("register")
def register_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="swell.yaml with a `discord:` section.")],
    guild: Annotated[
        str | None, typer.Option("--guild", help="Register in this guild only (shows at once).")
    ] = None,
) -> None:
    """Register the slash commands of swell.yaml's `discord.commands` with Discord (a bulk overwrite:
    commands no longer configured are removed). Needs SWELL_DISCORD_BOT_TOKEN."""
    from swell.core.config import load_config
    from swell.gateway.discord.config import bot_token
    from swell.gateway.discord.register import register

    try:
        loaded = load_config(config)
        if loaded.discord is None:
            raise SwellError(f"{config} has no `discord:` section")
        loaded.discord.check_services({service.name for service in loaded.services})
        answer = asyncio.run(register(loaded.discord, bot_token(), guild=guild))
    except SwellError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    where = f"guild {guild}" if guild else "globally"
    for command in answer:
        typer.echo(json.dumps({"id": command.get("id"), "name": command.get("name")}))
    typer.echo(f"registered {len(answer)} commands {where}", err=True)
