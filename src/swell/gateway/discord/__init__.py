"""The Discord door: slash commands in, follow-ups with the images out.

- `config`: `discord:` in swell.yaml (commands, channel routing, per-user limits); the bot token in
  `SWELL_DISCORD_BOT_TOKEN`.
- `signature`: Ed25519 verification, fresh timestamps, replayed ids (each a 401).
- `mapping`: interaction -> service, input and model; Discord's response shapes. Pure.
- `limits`: per-user rate and concurrency. Pure.
- `interactions`: `POST /discord/interactions` (`DiscordDoor`), submitting through `Submissions`.
- `api`: the calls to Discord's HTTP API and its rate limits (`DiscordError`, `RateLimited`).
- `followups`: the outbox channel `discord` that edits the deferred response (`DiscordChannel`).
- `register`, `cli`: `swell discord register`.

Errors: `BadSignature` (an `AuthError`, 401), `Limited` (a user over a cap, told in Discord),
`DiscordError` and its `RateLimited` (Discord's API refused or failed a call); all are `SwellError`s.

This package's `__init__` imports nothing: `swell.core.config` imports `config` from here.
"""
