"""The Discord door's configuration: `discord:` in swell.yaml.

    discord:
      application_id: "1234567890"          # the app's id (Developer Portal, General Information)
      public_key: 4f1c...                   # its Ed25519 public key, 64 hex digits
      api_base: https://discord.com/api/v10 # tests point this at a local stand-in
      commands:
        imagine:
          service: sd15
          description: Draw a picture
          options:
            prompt: {field: prompt, description: What to draw}    # Discord option -> input field
            seed: {field: seed, type: integer, required: false}
            steps: steps                                          # shorthand: a string option
          defaults: {steps: 25}                                   # merged under the options
      channels: {"998877": sd15-fast}       # a command used in this channel goes to this service
      per_user_rate: 10                     # commands per user per minute
      per_user_concurrency: 2               # unfinished jobs per user
      max_timestamp_skew_seconds: 60        # older (or future) signed timestamps are refused

The bot token is never in the file: `SWELL_DISCORD_BOT_TOKEN` holds it (only `swell discord
register` needs it; follow-ups go through the interaction's own token), and it is one of the
gateway's secrets a worker never inherits (`swell.core.config.GATEWAY_SECRETS`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from swell.core.errors import ConfigError

BOT_TOKEN_ENV = "SWELL_DISCORD_BOT_TOKEN"
DEFAULT_API = "https://discord.com/api/v10"
COMMAND_NAME = r"^[-_a-z0-9]{1,32}$"  # Discord's CHAT_INPUT name rule, lower case
SNOWFLAKE = r"^[0-9]{1,20}$"
OPTION_TYPES = {"string": 3, "integer": 4, "boolean": 5, "number": 10}  # Discord's option type numbers


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OptionConfig(_Strict):
    """One option of a slash command and the input field its value goes to."""

    field: str = Field(min_length=1, max_length=64)
    type: Literal["string", "integer", "boolean", "number"] = "string"
    description: str = Field(default="", max_length=100)
    required: bool = True


class CommandConfig(_Strict):
    """A slash command: the service it submits to, its options and the input it always carries."""

    service: str
    description: str = Field(min_length=1, max_length=100)
    options: dict[str, OptionConfig] = Field(default_factory=dict, max_length=25)
    defaults: dict[str, Any] = Field(default_factory=dict)
    model: str | None = None  # the checkpoint (a key of the service's `models`); None: its default

    @field_validator("options", mode="before")
    @classmethod
    def _shorthand(cls, options: Any) -> Any:
        """`prompt: prompt` is `prompt: {field: prompt}`."""
        if not isinstance(options, Mapping):
            return options
        return {name: {"field": spec} if isinstance(spec, str) else spec for name, spec in options.items()}

    @field_validator("options")
    @classmethod
    def _option_names(cls, options: dict[str, OptionConfig]) -> dict[str, OptionConfig]:
        for name in options:
            if not re.fullmatch(COMMAND_NAME, name):
                raise ValueError(f"option {name!r} is not a Discord option name (1-32 of a-z 0-9 - _)")
        return options

    @model_validator(mode="after")
    def _required_first(self) -> CommandConfig:
        """Discord refuses a required option after an optional one; say so at load, not at register."""
        seen_optional = False
        for name, option in self.options.items():
            if option.required and seen_optional:
                raise ValueError(f"required option {name!r} comes after an optional one (Discord refuses it)")
            seen_optional = seen_optional or not option.required
        return self


class DiscordConfig(_Strict):
    """The Discord interactions door (see the module docstring). Present: `/discord/interactions` is
    served; absent, that path is a 404."""

    application_id: str = Field(pattern=SNOWFLAKE)
    public_key: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    api_base: str = Field(default=DEFAULT_API, pattern=r"^https?://")
    commands: dict[str, CommandConfig] = Field(default_factory=dict, max_length=100)
    channels: dict[str, str] = Field(default_factory=dict)  # channel id -> service
    per_user_rate: int = Field(default=10, ge=1, le=10_000)  # commands per user per minute
    per_user_concurrency: int = Field(default=2, ge=1, le=1000)  # a user's unfinished jobs
    max_timestamp_skew_seconds: float = Field(default=60.0, gt=0, le=3600)
    progress_every_seconds: float = Field(default=3.0, ge=1.0)  # the least time between progress edits
    request_timeout_seconds: float = Field(default=10.0, gt=0)  # one call to Discord's API

    @field_validator("commands")
    @classmethod
    def _command_names(cls, commands: dict[str, CommandConfig]) -> dict[str, CommandConfig]:
        for name in commands:
            if not re.fullmatch(COMMAND_NAME, name):
                raise ValueError(f"command {name!r} is not a slash command name (1-32 of a-z 0-9 - _)")
        return commands

    @field_validator("channels")
    @classmethod
    def _channel_ids(cls, channels: dict[str, str]) -> dict[str, str]:
        for channel in channels:
            if not re.fullmatch(SNOWFLAKE, channel):
                raise ValueError(f"channel {channel!r} is not a Discord id (digits)")
        return channels

    def check_services(self, services: set[str]) -> None:
        """Every service a command or a channel names exists: a ConfigError naming the key."""
        for name, command in self.commands.items():
            if command.service not in services:
                raise ConfigError(_unknown(command.service, services), key=f"discord.commands.{name}.service")
        for channel, service in self.channels.items():
            if service not in services:
                raise ConfigError(_unknown(service, services), key=f"discord.channels.{channel}")


def _unknown(service: str, services: set[str]) -> str:
    return f"no service named {service!r} (known: {', '.join(sorted(services)) or 'none'})"


def bot_token(environ: Mapping[str, str] | None = None) -> str:
    """The bot token from `SWELL_DISCORD_BOT_TOKEN`; a ConfigError naming the variable when unset."""
    token = (os.environ if environ is None else environ).get(BOT_TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError("the Discord bot token is not set", key=BOT_TOKEN_ENV)
    return token


__all__ = ["BOT_TOKEN_ENV", "OPTION_TYPES", "CommandConfig", "DiscordConfig", "OptionConfig", "bot_token"]
