"""The door's pure parts: signature checks, the replay guard, per-user limits, the mapping, config."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from swell.core.config import parse_config
from swell.core.errors import ConfigError, ValidationError
from swell.gateway.discord.config import DiscordConfig, bot_token
from swell.gateway.discord.limits import UserLimits
from swell.gateway.discord.mapping import command_input, option_for, parse_interaction, to_submission
from swell.gateway.discord.signature import BadSignature, ReplayGuard, Verifier, fresh
from tests.gateway.discord.conftest import CHANNEL_ID, ROUTED_CHANNEL, Signer, discord_section, interaction


def test_a_real_signature_verifies_and_any_change_fails(signer: Signer) -> None:
    verifier = Verifier(signer.public_hex, max_skew=60)
    body = b'{"type":1}'
    headers = signer.headers(body)
    now = time.time()
    verifier.check(headers["X-Signature-Ed25519"], headers["X-Signature-Timestamp"], body, now)
    stamp, signature = headers["X-Signature-Timestamp"], headers["X-Signature-Ed25519"]
    other = Signer(Ed25519PrivateKey.generate()).headers(body, int(stamp))["X-Signature-Ed25519"]
    bad = [
        (signature, stamp, body + b" "),  # the body changed
        (signature, str(int(stamp) + 1), body),  # the timestamp changed
        (other, stamp, body),  # another key
        ("zz" + signature[2:], stamp, body),  # not hex
        (signature[:-2], stamp, body),  # short
        (None, stamp, body),
        (signature, None, body),
        ("", "", body),
    ]
    for sig, ts, payload in bad:
        with pytest.raises(BadSignature):
            verifier.check(sig, ts, payload, now)


def test_a_signed_but_stale_or_future_timestamp_fails(signer: Signer) -> None:
    verifier = Verifier(signer.public_hex, max_skew=60)
    body = b"{}"
    now = time.time()
    for offset in (-61, 61, -3600):
        headers = signer.headers(body, int(now) + offset)
        with pytest.raises(BadSignature, match="stale"):
            verifier.check(headers["X-Signature-Ed25519"], headers["X-Signature-Timestamp"], body, now)
    assert fresh(str(int(now) - 59), now, 60) and not fresh("1e9", now, 60) and not fresh("-5", now, 60)


def test_the_replay_guard_forgets_after_its_window_and_stays_bounded() -> None:
    guard = ReplayGuard(window=10, capacity=3)
    assert guard.first_time("a", 0.0) and not guard.first_time("a", 5.0)
    assert guard.first_time("a", 10.5)  # forgotten once the window passed
    for name in "bcd":
        assert guard.first_time(name, 11.0)
    assert len(guard) == 3  # "a" (the oldest) was dropped at the cap
    assert guard.first_time("a", 11.0)


def test_rate_is_a_sliding_minute_per_user() -> None:
    limits = UserLimits(per_minute=2, concurrency=5)
    limits.start("u", 0.0)
    limits.start("u", 10.0)
    assert limits.rate_wait("u", 20.0) == pytest.approx(40.0)
    assert limits.rate_wait("other", 20.0) == 0
    assert limits.rate_wait("u", 60.0) == 0  # the first start left the window


def test_concurrency_holds_until_released_or_until() -> None:
    limits = UserLimits(per_minute=100, concurrency=2)
    limits.hold("u", "j1", until=100.0)
    limits.hold("u", "j2", until=50.0)
    assert limits.held("u", 10.0) == ["j1", "j2"]
    limits.release("j1")
    assert limits.held("u", 10.0) == ["j2"]
    assert limits.held("u", 50.0) == []  # past its until
    limits.release("unknown")
    limits.prune(1000.0)
    assert limits.statistics() == {"users": 0, "held_jobs": 0}


def _config(signer: Signer) -> DiscordConfig:
    return DiscordConfig.model_validate(discord_section(signer.public_hex, "http://127.0.0.1:1/api/v10"))


def test_a_command_maps_to_service_and_input_with_defaults_and_routing(signer: Signer) -> None:
    config = _config(signer)
    plain = to_submission(parse_interaction(interaction(options={"prompt": "a cat"})), config)
    assert (plain.service, plain.input) == ("draw", {"steps": 2, "prompt": "a cat"})
    routed = to_submission(parse_interaction(interaction(channel=ROUTED_CHANNEL)), config)
    assert routed.service == "draw-fast"
    ask = to_submission(
        parse_interaction(interaction("ask", {"question": "why?"}, channel=CHANNEL_ID)), config
    )
    assert (ask.service, ask.input) == ("chat", {"text": "why?"})


def test_options_are_refused_by_their_discord_name(signer: Signer) -> None:
    command = _config(signer).commands["imagine"]
    cases = [({"prompt": "x", "style": "y"}, "style"), ({}, "prompt"), ({"prompt": "x", "seed": "7"}, "seed")]
    for options, name in cases:
        with pytest.raises(ValidationError) as caught:
            command_input(command, options)
        assert caught.value.field == name
    assert command_input(command, {"prompt": "x", "seed": 7})["seed"] == 7
    assert option_for(command, "input.seed") == "seed" and option_for(command, "input.steps") is None


def test_an_unknown_command_and_a_body_without_a_user_are_refused(signer: Signer) -> None:
    with pytest.raises(ValidationError, match="unknown command"):
        to_submission(parse_interaction(interaction("nope")), _config(signer))
    payload = interaction()
    del payload["member"]
    with pytest.raises(ValidationError) as caught:
        parse_interaction(payload)
    assert caught.value.field == "user"
    payload = interaction()
    payload["user"] = payload.pop("member")["user"]  # a DM carries `user`
    assert parse_interaction(payload).user_id == payload["user"]["id"]


def test_config_errors_name_the_key(signer: Signer) -> None:
    section = discord_section(signer.public_hex, "http://x/api")
    section["commands"]["imagine"]["service"] = "missing"
    with pytest.raises(ConfigError, match=r"discord\.commands\.imagine\.service"):
        DiscordConfig.model_validate(section).check_services({"draw", "chat"})
    bad = {**discord_section(signer.public_hex, "http://x/api"), "public_key": "xyz"}
    with pytest.raises(ConfigError, match=r"discord\.public_key"):
        parse_config({"discord": bad})
    options = {"a": {"field": "a", "required": False}, "b": {"field": "b"}}
    late = {
        **discord_section(signer.public_hex, "http://x/api"),
        "commands": {"c": {"service": "s", "description": "d", "options": options}},
    }
    with pytest.raises(ConfigError, match="after an optional one"):
        parse_config({"discord": late})
    with pytest.raises(ConfigError, match="SWELL_DISCORD_BOT_TOKEN"):
        bot_token({})


def test_the_bot_token_is_a_gateway_secret_no_worker_inherits() -> None:
    with pytest.raises(ConfigError, match="secrets"):
        parse_config(
            {
                "services": [
                    {
                        "name": "s",
                        "engine": "callable",
                        "options": {"function": "builtins:dict"},
                        "pass_env": ["SWELL_DISCORD_*"],
                    }
                ]
            }
        )
