"""From a Discord interaction to a Swell submit, and back to Discord's response shapes (pure code).

An APPLICATION_COMMAND interaction (type 2) carries the command's name and its options as a list of
`{name, type, value}`; the user is `member.user` in a guild and `user` in a DM. `to_submission`
turns it into a service, an input and a model through the command's configuration: the service is
the channel's (`channels`) when the channel is routed, else the command's; the input is the
command's `defaults` with each option's value written to its `field`. Every refusal is a
`ValidationError` naming the Discord option (what the user typed), not the input field.

Responses: PONG (type 1), DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE (type 5: the user sees "thinking..."
until the follow-up edits the message), and an ephemeral CHANNEL_MESSAGE_WITH_SOURCE (type 4 with
flag 64: only the user who typed the command sees it) for every refusal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from swell.core.errors import ValidationError
from swell.gateway.discord.config import CommandConfig, DiscordConfig, OptionConfig

PING = 1
APPLICATION_COMMAND = 2
PONG = 1
CHANNEL_MESSAGE = 4
DEFERRED_CHANNEL_MESSAGE = 5
EPHEMERAL = 1 << 6
MAX_CONTENT = 2000  # characters of a message's content


@dataclass(frozen=True, slots=True)
class Interaction:
    """The parts of an interaction the door uses."""

    id: str
    type: int
    application_id: str
    token: str
    channel_id: str | None
    user_id: str
    command: str | None
    options: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Submission:
    """What a command asks Swell for."""

    service: str
    input: dict[str, Any]
    model: str | None


def parse_interaction(payload: Any) -> Interaction:
    """The interaction in a (signed, so Discord's) JSON body; `ValidationError` naming the key for a
    body that lacks what the door needs."""
    if not isinstance(payload, dict):
        raise ValidationError("the interaction must be a JSON object", field="body")
    kind = payload.get("type")
    if kind == PING:
        return Interaction(str(payload.get("id", "")), PING, "", "", None, "", None, {})
    data = payload["data"] if isinstance(payload.get("data"), dict) else {}
    return Interaction(
        id=_text(payload, "id"),
        type=kind if isinstance(kind, int) else 0,
        application_id=_text(payload, "application_id"),
        token=_text(payload, "token"),
        channel_id=_optional_text(payload.get("channel_id")),
        user_id=_user_id(payload),
        command=_optional_text(data.get("name")),
        options=_options(data.get("options")),
    )


def _text(payload: dict[str, Any], key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not value:
        raise ValidationError(f"the interaction has no {key}", field=key)
    return value


def _optional_text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _user_id(payload: dict[str, Any]) -> str:
    member = payload.get("member")
    user = member.get("user") if isinstance(member, dict) else payload.get("user")
    if not isinstance(user, dict) or not isinstance(user.get("id"), str):
        raise ValidationError("the interaction names no user", field="user")
    return str(user["id"])


def _options(raw: Any) -> dict[str, Any]:
    """`[{name, type, value}]` as `{name: value}`; a sub-command (an option with options) is refused."""
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise ValidationError("options must be a list", field="options")
    options: dict[str, Any] = {}
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or "value" not in item:
            raise ValidationError("sub-commands and option groups are not supported", field="options")
        options[item["name"]] = item["value"]
    return options


def to_submission(interaction: Interaction, config: DiscordConfig) -> Submission:
    """The service, input and model `interaction`'s command asks for (see the module docstring)."""
    command = config.commands.get(interaction.command or "")
    if command is None:
        raise ValidationError(f"unknown command /{interaction.command}", field="command")
    service = config.channels.get(interaction.channel_id or "", command.service)
    return Submission(service=service, input=command_input(command, interaction.options), model=command.model)


def command_input(command: CommandConfig, options: dict[str, Any]) -> dict[str, Any]:
    """The command's defaults with each option's value at its field; unknown, missing or mistyped
    options are refused by name."""
    unknown = sorted(set(options) - set(command.options))
    if unknown:
        raise ValidationError(f"unknown option {unknown[0]!r}", field=unknown[0])
    payload = dict(command.defaults)
    for name, option in command.options.items():
        if name not in options:
            if option.required:
                raise ValidationError(f"option {name!r} is required", field=name)
            continue
        payload[option.field] = _typed(name, option, options[name])
    return payload


def _typed(name: str, option: OptionConfig, value: Any) -> Any:
    fits = {
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
    }[option.type]
    if not fits:
        article = "an" if option.type == "integer" else "a"
        raise ValidationError(f"option {name!r} must be {article} {option.type}", field=name)
    return value


def option_for(command: CommandConfig | None, field: str | None) -> str | None:
    """The Discord option whose value went to the input field an engine refused (`input.seed`,
    `input.seed[0]` or `seed`), or None when no option did."""
    if command is None or not field:
        return None
    bare = field.removeprefix("input.").split(".", 1)[0].split("[", 1)[0]
    for name, option in command.options.items():
        if option.field == bare:
            return name
    return None


# -- responses -------------------------------------------------------------------------------------


def pong() -> dict[str, Any]:
    return {"type": PONG}


def deferred() -> dict[str, Any]:
    """ "Thinking...": the follow-up edits this response later (within the token's 15 minutes)."""
    return {"type": DEFERRED_CHANNEL_MESSAGE}


def ephemeral(message: str) -> dict[str, Any]:
    """A message only the user who typed the command sees, with mentions disabled."""
    return {
        "type": CHANNEL_MESSAGE,
        "data": {"content": clip(message), "flags": EPHEMERAL, "allowed_mentions": {"parse": []}},
    }


def clip(text: str, limit: int = MAX_CONTENT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


__all__ = [
    "APPLICATION_COMMAND",
    "DEFERRED_CHANNEL_MESSAGE",
    "EPHEMERAL",
    "PING",
    "Interaction",
    "Submission",
    "command_input",
    "deferred",
    "ephemeral",
    "option_for",
    "parse_interaction",
    "pong",
    "to_submission",
]
