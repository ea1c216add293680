"""`swell discord register` against the stand-in API: the commands from swell.yaml, PUT with the bot
token, globally or in one guild."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from swell.cli import app
from tests.gateway.discord.api import StandIn
from tests.gateway.discord.conftest import Signer, discord_section
from tests.support import ROOT


def _write_config(tmp_path: Path, public_key: str, api_base: str) -> Path:
    raw: dict[str, Any] = {
        "services": [
            {"name": n, "engine": "callable", "options": {"function": "builtins:dict"}}
            for n in ("draw", "draw-fast", "chat", "tiny")
        ],
        "discord": discord_section(public_key, api_base),
    }
    path = tmp_path / "swell.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_register_puts_the_configured_commands(tmp_path: Path, signer: Signer, stand_in: StandIn) -> None:
    path = _write_config(tmp_path, signer.public_hex, stand_in.api_base)
    env = {"SWELL_DISCORD_BOT_TOKEN": stand_in.bot_token}
    result = CliRunner().invoke(app, ["discord", "register", "--config", str(path)], env=env)
    assert result.exit_code == 0, result.output
    assert stand_in.problems == []
    ((guild, commands),) = stand_in.registered
    assert guild is None
    imagine = next(c for c in commands if c["name"] == "imagine")
    assert imagine["description"] == "Draw a picture" and imagine["type"] == 1
    assert imagine["options"] == [
        {"type": 3, "name": "prompt", "description": "What to draw", "required": True},
        {"type": 4, "name": "seed", "description": "seed", "required": False},
    ]
    assert '"name": "imagine"' in result.stdout and "registered 3 commands globally" in result.output

    guild_run = CliRunner().invoke(app, ["discord", "register", "-c", str(path), "--guild", "77"], env=env)
    assert guild_run.exit_code == 0, guild_run.output
    assert stand_in.registered[-1][0] == "77"


def test_register_without_the_token_or_with_a_wrong_one_fails(
    tmp_path: Path, signer: Signer, stand_in: StandIn
) -> None:
    path = _write_config(tmp_path, signer.public_hex, stand_in.api_base)
    missing = CliRunner().invoke(
        app, ["discord", "register", "-c", str(path)], env={"SWELL_DISCORD_BOT_TOKEN": ""}
    )
    assert missing.exit_code == 1 and "SWELL_DISCORD_BOT_TOKEN" in missing.output
    wrong = CliRunner().invoke(
        app, ["discord", "register", "-c", str(path)], env={"SWELL_DISCORD_BOT_TOKEN": "nope"}
    )
    assert wrong.exit_code == 1 and "401" in wrong.output
    assert "nope" not in wrong.output
    assert stand_in.registered == []


def test_the_command_is_documented() -> None:
    usage = (ROOT / "docs" / "usage.md").read_text()
    assert "swell discord register" in usage
