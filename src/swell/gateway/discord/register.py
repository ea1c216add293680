"""`swell discord register`: the slash commands built from `discord.commands`, PUT to Discord.

A PUT of the whole list overwrites the application's commands (Discord's bulk overwrite), so running
it again after a change of swell.yaml is how commands are updated or removed. Global commands can
take a while to show in every client; `--guild ID` registers them in one guild, at once (for tests
and trying a bot out). It needs the bot token (`SWELL_DISCORD_BOT_TOKEN`).
"""

from __future__ import annotations

from typing import Any

from swell.gateway.discord.api import DiscordAPI
from swell.gateway.discord.config import OPTION_TYPES, CommandConfig, DiscordConfig

CHAT_INPUT = 1  # a slash command


def command_payloads(config: DiscordConfig) -> list[dict[str, Any]]:
    """Discord's application command objects for every configured command."""
    return [command_payload(name, command) for name, command in config.commands.items()]


def command_payload(name: str, command: CommandConfig) -> dict[str, Any]:
    options = [
        {
            "type": OPTION_TYPES[option.type],
            "name": option_name,
            "description": option.description or option_name,
            "required": option.required,
        }
        for option_name, option in command.options.items()
    ]
    return {"type": CHAT_INPUT, "name": name, "description": command.description, "options": options}


async def register(config: DiscordConfig, token: str, *, guild: str | None = None) -> list[dict[str, Any]]:
    """Overwrite the application's commands (or one guild's) with the configured ones; what Discord
    answered (the commands with their ids)."""
    api = DiscordAPI(config.api_base, timeout=config.request_timeout_seconds, bot_token=token)
    try:
        return await api.put_commands(config.application_id, command_payloads(config), guild)
    finally:
        await api.aclose()


__all__ = ["command_payload", "command_payloads", "register"]
