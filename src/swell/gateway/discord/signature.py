"""Who may call the interactions endpoint: Discord's Ed25519 signature, a fresh timestamp, and each
interaction id once.

Discord signs `X-Signature-Timestamp + raw body` with the application's key and sends the signature
in `X-Signature-Ed25519` (hex). It also sends bad signatures on purpose and drops an endpoint that
accepts one, so every failure here is the same 401 (`BadSignature`), decided before the body is
parsed. The order matters: the signature first (nothing unsigned reaches the rest), then the
timestamp (a captured request goes stale after `max_skew` seconds), then the replay check, which
remembers only ids that passed both, so nobody can fill it with forged ids.

`ReplayGuard` holds the ids of the last `window` seconds in insertion order (a bounded dict: at the
cap the oldest is forgotten first). A restart forgets them all; the door's durable idempotency key
(the interaction id) still keeps a repeat from making a second job.
"""

from __future__ import annotations

from collections import OrderedDict

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from swell.core.errors import AuthError

MAX_REMEMBERED = 200_000  # interaction ids held at most (well above 1,000/s over a 60 s window)


class BadSignature(AuthError):
    """A request Discord did not sign, or signed too long ago, or sent before (401)."""


class Verifier:
    """Checks a request's Ed25519 signature and timestamp against the application's public key."""

    def __init__(self, public_key_hex: str, *, max_skew: float) -> None:
        self.key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex))
        self.max_skew = max_skew

    def check(self, signature: str | None, timestamp: str | None, body: bytes, now: float) -> None:
        """Return when `signature` (hex) signs `timestamp + body` and `timestamp` (Unix seconds) is
        within `max_skew` of `now`; `BadSignature` otherwise, for any reason."""
        if not signature or not timestamp:
            raise BadSignature("missing X-Signature-Ed25519 or X-Signature-Timestamp")
        try:
            self.key.verify(bytes.fromhex(signature), timestamp.encode() + body)
        except (InvalidSignature, ValueError, UnicodeEncodeError):
            raise BadSignature("invalid request signature") from None
        if not fresh(timestamp, now, self.max_skew):
            raise BadSignature("stale request timestamp")


def fresh(timestamp: str, now: float, max_skew: float) -> bool:
    """Whether `timestamp` (whole Unix seconds, as Discord sends it) is within `max_skew` of `now`."""
    if not timestamp.isdigit() or len(timestamp) > 12:
        return False
    return abs(now - int(timestamp)) <= max_skew


class ReplayGuard:
    """Interaction ids seen in the last `window` seconds (see the module docstring)."""

    def __init__(self, window: float, *, capacity: int = MAX_REMEMBERED) -> None:
        self.window = window
        self.capacity = capacity
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first_time(self, interaction_id: str, now: float) -> bool:
        """Remember `interaction_id`; False when it was already seen within the window."""
        self._forget_before(now - self.window)
        if interaction_id in self._seen:
            return False
        self._seen[interaction_id] = now
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return True

    def _forget_before(self, cutoff: float) -> None:
        while self._seen:
            oldest, seen_at = next(iter(self._seen.items()))
            if seen_at >= cutoff:
                return
            del self._seen[oldest]

    def __len__(self) -> int:
        return len(self._seen)

    def __repr__(self) -> str:
        return f"ReplayGuard(window={self.window:g}, remembered={len(self._seen)})"


__all__ = ["BadSignature", "ReplayGuard", "Verifier", "fresh"]
