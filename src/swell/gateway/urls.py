"""Callback URLs: refuse the ones that would make Swell call into private networks (SSRF).

A callback URL passes when it is http(s), holds no control character, space or backslash, and its host
either resolves only to public addresses or is named in the allow-list (`SWELL_CALLBACK_ALLOW_HOSTS`).
An address is public when it, and any IPv4 address it embeds (IPv4-mapped and IPv4-compatible forms,
6to4, Teredo, NAT64), is globally routable.

Allow-list entries name a host and, optionally, a port: `hooks.internal` (ports 80 and 443 only),
`hooks.internal:8080`, `hooks.internal:*` (any port), `[fd00::1]:8443`, `10.0.0.7`. A bare entry allowing
only the default web ports keeps an allowed host from being turned against its other services
(a database, an admin port) by a client that picks the port.

Resolving a name blocks; async code goes through `CallbackResolver`, which runs lookups in a bounded pool
of its own with a deadline, so a resolver that never answers fails that one check and nothing else.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import unicodedata
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from swell.core.errors import ConfigError, Unavailable, ValidationError

FIELD = "callback_url"
ALLOW_KEY = "SWELL_CALLBACK_ALLOW_HOSTS"
MAX_URL_LENGTH = 4096
DEFAULT_PORTS = frozenset({80, 443})
ANY_PORT = None  # in an allow table: every port of the host

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AllowTable = dict[str, frozenset[int] | None]  # host -> allowed ports (None: any)

NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the IPv4 address in the last 32 bits
NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: local use, never global
COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated IPv4-compatible form (::a.b.c.d)


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
    """`url` when it is http(s) with a host that resolves only to public addresses, or a host and
    port that `allow_hosts` allows; `ValidationError` on field `callback_url` otherwise.

    Resolves the host (blocking: call it from a thread in async code, or use `CallbackResolver`).
    """
    pin_callback_url(url, allow_hosts)
    return url


def pin_callback_url(url: str, allow_hosts: frozenset[str]) -> PinnedURL:
    """Check `url` as `check_callback_url` does and pin it to the first address it resolved to."""
    host, port = _host_and_port(url)
    if allowed(host, _effective_port(url, port), allow_hosts):
        return PinnedURL(url)
    addresses = resolve(host, port)
    for address in addresses:
        if (why := non_public_reason(address)) is not None:
            raise ValidationError(
                f"callback host {host!r} resolves to {address}, {why}; "
                f"list it in {ALLOW_KEY} (as host:port) to allow it",
                field=FIELD,
            )
    if len(addresses) == 1 and _same_address(host, addresses[0]):
        return PinnedURL(url)  # an address already
    return _pinned(url, host, port, addresses[0])


def is_public(address: IPAddress) -> bool:
    """False for loopback, private, link-local, multicast, reserved, unspecified and any other
    address that is not globally routable, and for an IPv6 address embedding such an IPv4 one."""
    return non_public_reason(address) is None


def non_public_reason(address: IPAddress) -> str | None:
    """Why `address` is not public (a phrase for an error message), or None when it is."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in NAT64_LOCAL:
            return "a local-use NAT64 address (64:ff9b:1::/48)"
        for form, embedded in embedded_ipv4(address):
            if not _globally_routable(embedded):
                return f"which embeds the non-public IPv4 address {embedded} ({form})"
        if address.ipv4_mapped is not None or address in NAT64:  # the IPv4 host itself, reached so
            return None
    if not _globally_routable(address):
        return "a non-public address"
    return None


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """The IPv4 addresses an IPv6 address carries, with the name of the form that carries each."""
    found: list[tuple[str, ipaddress.IPv4Address]] = []
    if address.ipv4_mapped is not None:
        found.append(("IPv4-mapped", address.ipv4_mapped))
    if address.sixtofour is not None:
        found.append(("6to4", address.sixtofour))
    if address.teredo is not None:
        server, client = address.teredo
        found += [("Teredo", server), ("Teredo", client)]
    if address in NAT64:
        found.append(("NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)))
    if address in COMPATIBLE and int(address) > 1:  # :: and ::1 are themselves, not IPv4
        found.append(("IPv4-compatible", ipaddress.IPv4Address(int(address))))
    return found


def _globally_routable(address: IPAddress) -> bool:
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


# -- the allow-list -------------------------------------------------------------------------------


def allowed(host: str, port: int, allow_hosts: frozenset[str]) -> bool:
    """Whether the allow-list lets callbacks reach `host` (lower-case) on `port`."""
    if not allow_hosts:
        return False
    ports = allow_table(allow_hosts).get(_normal_host(host), frozenset())
    return ports is ANY_PORT or port in ports


@functools.lru_cache(maxsize=32)
def allow_table(allow_hosts: frozenset[str]) -> AllowTable:
    """The allow-list as host -> ports; `ConfigError` naming SWELL_CALLBACK_ALLOW_HOSTS for a bad entry."""
    table: AllowTable = {}
    for entry in allow_hosts:
        host, ports = parse_allow_entry(entry)
        known = table.get(host, frozenset())
        table[host] = ANY_PORT if ports is ANY_PORT or known is ANY_PORT else known | ports
    return table


def validate_allow_hosts(entries: Iterable[str]) -> frozenset[str]:
    """The entries, lower-cased, once each of them parses (for configuration loading)."""
    hosts = frozenset(entry.strip().lower() for entry in entries if entry.strip())
    allow_table(hosts)
    return hosts


def parse_allow_entry(entry: str) -> tuple[str, frozenset[int] | None]:
    """`host`, `host:port`, `host:*`, `[v6]`, `[v6]:port` or a bare IPv6 address -> (host, ports)."""
    text = entry.strip().lower()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise _bad_entry(entry, "an IPv6 address in brackets is [address] or [address]:port")
        return _ip_host(host, entry), _ports(rest[1:] if rest else None, entry)
    if text.count(":") > 1:  # a bare IPv6 address: no port can follow it
        return _ip_host(text, entry), DEFAULT_PORTS
    host, sep, port = text.partition(":")
    if not host or any(ch in host for ch in "/@?#[] ") or _has_bad_character(host):
        raise _bad_entry(entry, "not a host name")
    return _normal_host(host), _ports(port if sep else None, entry)


def _ports(text: str | None, entry: str) -> frozenset[int] | None:
    if text is None:
        return DEFAULT_PORTS
    if text == "*":
        return ANY_PORT
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 65536:
        raise _bad_entry(entry, "the port must be a number from 1 to 65535, or *")
    return frozenset({int(text)})


def _ip_host(text: str, entry: str) -> str:
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise _bad_entry(entry, "not an IPv6 address") from None


def _bad_entry(entry: str, why: str) -> ConfigError:
    return ConfigError(f"allow-list entry {entry!r}: {why}", key=ALLOW_KEY)


def _normal_host(host: str) -> str:
    """A host as tables hold it: lower case, IP addresses in their compressed form."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower().rstrip(".")


# -- parsing and pinning --------------------------------------------------------------------------


def _host_and_port(url: str) -> tuple[str, int | None]:
    _check_characters(url)
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


def _check_characters(url: str) -> None:
    """Refuse what no valid URL holds and what parsers disagree on: control characters (C0, DEL, C1),
    spaces and other white space, and backslashes (which browsers' parsers read as `/`)."""
    if len(url) > MAX_URL_LENGTH:
        raise ValidationError(f"the callback URL is longer than {MAX_URL_LENGTH} characters", field=FIELD)
    for index, ch in enumerate(url):
        if _has_bad_character(ch):
            raise ValidationError(
                f"the callback URL holds the character {ch!r} at position {index}; "
                "control characters, spaces and backslashes are not allowed",
                field=FIELD,
            )


def _has_bad_character(text: str) -> bool:
    return any(ch == "\\" or ch.isspace() or unicodedata.category(ch) == "Cc" for ch in text)


def _effective_port(url: str, port: int | None) -> int:
    if port is not None:
        return port
    return 443 if url[:6].lower() == "https:" else 80


def _same_address(host: str, address: IPAddress) -> bool:
    try:
        return ipaddress.ip_address(host) == address
    except ValueError:
        return False


def _pinned(url: str, host: str, port: int | None, address: IPAddress) -> PinnedURL:
    parts = urlsplit(url)
    userinfo, _, named = parts.netloc.rpartition("@")
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = "@".join(filter(None, (userinfo, f"{literal}:{port}" if port is not None else literal)))
    return PinnedURL(urlunsplit(parts._replace(netloc=netloc)), host=named, server_name=host)


# -- off the event loop ---------------------------------------------------------------------------


class CallbackResolver:
    """Callback checks for async code: in a pool of `threads` threads of its own, each with a deadline.

    A lookup that passes `timeout` seconds is a `ValidationError` on `callback_url` (that submit's own
    422); its thread stays busy until the system resolver gives up, which is why the pool is bounded
    and separate from the one storage calls use. When `max_pending` checks are already waiting (a
    resolver that hangs for everyone), further ones are refused at once with `Unavailable` (503).
    """

    def __init__(self, *, threads: int = 8, timeout: float = 5.0, max_pending: int = 256) -> None:
        self.timeout = timeout
        self.max_pending = max_pending
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="swell-callback-dns")
        self._pending = 0
        self.timeouts = 0

    async def pin(self, url: str, allow_hosts: frozenset[str]) -> PinnedURL:
        """`pin_callback_url` off the event loop, within `timeout` seconds."""
        host, _ = _host_and_port(url)  # cheap refusals need no thread
        if self._pending >= self.max_pending:
            raise Unavailable("too many callback URL checks are waiting for DNS", retry_after=self.timeout)
        self._pending += 1
        try:
            future = asyncio.get_running_loop().run_in_executor(
                self._pool, pin_callback_url, url, allow_hosts
            )
            return await asyncio.wait_for(future, self.timeout)
        except TimeoutError:
            self.timeouts += 1
            raise ValidationError(
                f"callback host {host!r} did not resolve within {self.timeout:g} s", field=FIELD
            ) from None
        finally:
            self._pending -= 1

    async def check(self, url: str, allow_hosts: frozenset[str]) -> str:
        """`check_callback_url` off the event loop, within `timeout` seconds."""
        await self.pin(url, allow_hosts)
        return url

    def close(self) -> None:
        """Stop taking checks; lookups still running finish in their threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __repr__(self) -> str:
        return f"CallbackResolver(pending={self._pending}, timeouts={self.timeouts}, timeout={self.timeout})"
