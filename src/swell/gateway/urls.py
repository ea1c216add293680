"""Callback URLs: refuse the ones that would make Swell call into private networks (SSRF)."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from swell.core.errors import ValidationError

FIELD = "callback_url"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class PinnedURL:
    """Where to send a callback. For a host name, `url` names the checked address instead, so a name
    that re-resolves elsewhere (DNS rebinding) cannot redirect the request; `host` (the `Host`
    header) and `server_name` (for TLS) keep the name. For an address or an allowed host, `url` is
    the original and the others are None."""

    url: str
    host: str | None = None
    server_name: str | None = None


def check_callback_url(url: str, allow_hosts: frozenset[str]) -> str:
    """`url` when it is http(s) with a host that resolves only to public addresses, or a host
    listed (lower-case) in `allow_hosts`; `ValidationError` on field `callback_url` otherwise.

    Resolves the host (blocking: call it from a thread in async code).
    """
    pin_callback_url(url, allow_hosts)
    return url


def pin_callback_url(url: str, allow_hosts: frozenset[str]) -> PinnedURL:
    """Check `url` as `check_callback_url` does and pin it to the first address it resolved to."""
    host, port = _host_and_port(url)
    if host in {allowed.lower() for allowed in allow_hosts}:
        return PinnedURL(url)
    addresses = resolve(host, port)
    for address in addresses:
        if not is_public(address):
            raise ValidationError(
                f"callback host {host!r} resolves to {address}, a non-public address; "
                "list it in SWELL_CALLBACK_ALLOW_HOSTS to allow it",
                field=FIELD,
            )
    if len(addresses) == 1 and str(addresses[0]) == host:
        return PinnedURL(url)  # an address already
    parts = urlsplit(url)
    userinfo, _, named = parts.netloc.rpartition("@")
    literal = f"[{addresses[0]}]" if addresses[0].version == 6 else str(addresses[0])
    netloc = "@".join(filter(None, (userinfo, f"{literal}:{port}" if port is not None else literal)))
    return PinnedURL(urlunsplit(parts._replace(netloc=netloc)), host=named, server_name=host)


def is_public(address: IPAddress) -> bool:
    """False for loopback, private, link-local, multicast, reserved, unspecified and any other
    address that is not globally routable (an IPv4-mapped IPv6 address is judged as its IPv4)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def resolve(host: str, port: int | None) -> list[IPAddress]:
    """Every address `host` resolves to; an unresolvable host is a `ValidationError`."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port or 0, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ValidationError(f"callback host {host!r} does not resolve: {exc}", field=FIELD) from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    if not addresses:
        raise ValidationError(f"callback host {host!r} resolves to no address", field=FIELD)
    return addresses


def _host_and_port(url: str) -> tuple[str, int | None]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValidationError(f"not a valid URL: {exc}", field=FIELD) from None
    if parts.scheme not in ("http", "https"):
        raise ValidationError("the callback URL must use http or https", field=FIELD)
    if not parts.hostname:
        raise ValidationError("the callback URL has no host", field=FIELD)
    return parts.hostname.lower(), port
