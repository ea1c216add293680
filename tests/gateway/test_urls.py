"""Callback URLs that would reach private networks are refused, unless their host is allowed."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from typing import Any

import pytest

from swell.core.errors import ConfigError, Unavailable, ValidationError
from swell.gateway.urls import (
    CallbackResolver,
    PinnedURL,
    check_callback_url,
    is_public,
    pin_callback_url,
    validate_allow_hosts,
)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://127.8.9.10:8080/hook",
        "http://10.1.2.3/hook",
        "http://172.16.0.1/hook",
        "http://192.168.1.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://100.64.0.1/hook",
        "http://0.0.0.0/hook",
        "http://224.0.0.1/hook",
        "http://240.0.0.1/hook",
        "http://[::1]/hook",
        "http://[::]/hook",
        "http://[fe80::1]/hook",
        "http://[fc00::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[::ffff:10.0.0.1]/hook",
        "http://localhost:8000/hook",
        "http://LocalHost/hook",
        "http://no-such-host.invalid/hook",
        "ftp://93.184.216.34/hook",
        "file:///etc/passwd",
        "http:///no-host",
        "http://93.184.216.34:99999/hook",
        "http://[not-ipv6/hook",
        "not a url",
    ],
)
def test_refused(url: str) -> None:
    with pytest.raises(ValidationError) as refused:
        check_callback_url(url, frozenset())
    assert refused.value.field == "callback_url" and refused.value.status_code == 422


@pytest.mark.parametrize("url", ["https://93.184.216.34/hook", "http://[2606:4700::1111]:8443/x?y=1"])
def test_public_addresses_pass(url: str) -> None:
    assert check_callback_url(url, frozenset()) == url


def test_allowed_hosts_pass_whatever_they_resolve_to() -> None:
    allowed = frozenset({"localhost:9", "127.0.0.1"})
    assert check_callback_url("http://LOCALHOST:9/hook", allowed) == "http://LOCALHOST:9/hook"
    assert check_callback_url("http://127.0.0.1/hook", allowed) == "http://127.0.0.1/hook"
    with pytest.raises(ValidationError):
        check_callback_url("http://127.0.0.2/hook", allowed)
    assert check_callback_url("http://localhost/hook", frozenset({"LocalHost"})) == "http://localhost/hook"


@pytest.mark.parametrize(
    ("address", "public"),
    [("8.8.8.8", True), ("::ffff:8.8.8.8", True), ("192.0.2.1", False), ("::ffff:192.168.0.1", False)],
)
def test_is_public(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


def test_a_name_is_pinned_to_the_address_it_was_checked_at(monkeypatch: pytest.MonkeyPatch) -> None:
    """No DNS here: the resolver answers as a public name's would, then as a rebinding attack's."""
    answers = {"hooks.example.com": "93.184.216.34"}

    def getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list[tuple[object, ...]]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    pinned = pin_callback_url("https://user@Hooks.Example.com:8443/done?x=1", frozenset())
    assert pinned == PinnedURL(
        "https://user@93.184.216.34:8443/done?x=1",
        host="Hooks.Example.com:8443",
        server_name="hooks.example.com",
    )
    answers["hooks.example.com"] = "127.0.0.1"
    with pytest.raises(ValidationError):
        pin_callback_url("https://hooks.example.com/done", frozenset())
    assert pin_callback_url("http://93.184.216.34/x", frozenset()) == PinnedURL("http://93.184.216.34/x")
    assert pin_callback_url("http://[2606:4700::1111]/x", frozenset()) == PinnedURL(
        "http://[2606:4700::1111]/x"
    )


@pytest.mark.parametrize(
    ("url", "form"),
    [
        ("http://[2002:7f00:1::]/hook", "6to4"),
        ("http://[2002:a00:1::1]/hook", "6to4"),
        ("http://[2002:a9fe:a9fe::]/latest/meta-data", "6to4"),
        ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/hook", "Teredo"),
        ("http://[2001:0:7f00:1:0:0:f4ff:fffe]/hook", "Teredo"),  # server 127.0.0.1, client 11.0.0.1
        ("http://[64:ff9b::7f00:1]/hook", "NAT64"),
        ("http://[64:ff9b::a9fe:a9fe]/hook", "NAT64"),
        ("http://[64:ff9b:1::808:808]/hook", "local-use NAT64"),
        ("http://[::ffff:7f00:1]/hook", "IPv4-mapped"),
        ("http://[::7f00:1]/hook", "IPv4-compatible"),
        ("http://[::a00:1]/hook", "IPv4-compatible"),
    ],
)
def test_embedded_non_public_ipv4_is_refused(url: str, form: str) -> None:
    with pytest.raises(ValidationError) as refused:
        check_callback_url(url, frozenset())
    assert refused.value.field == "callback_url" and form in refused.value.message


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("2002:808:808::1", True),  # 6to4 of 8.8.8.8
        ("64:ff9b::808:808", True),  # NAT64 (DNS64) of 8.8.8.8
        ("2002:c0a8:101::", False),
        ("64:ff9b::c0a8:101", False),
        ("::ffff:8.8.8.8", True),
        ("::8.8.8.8", False),  # deprecated IPv4-compatible: reserved whatever it embeds
    ],
)
def test_embedding_forms_are_judged_by_the_ipv4_they_carry(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize(
    "url",
    [
        "http://93.184.216.34/hook\r\nX-Injected: 1",
        "http://93.184.216.34/hook\n",
        "http://93.184.216.34/ho\x00ok",
        "http://93.184.216.34/ho\tok",
        "http://93.184.216.34/ho ok",
        " http://93.184.216.34/hook",
        "http://93.184.216.34/hook\x7f",
        "http://93.184.216.34/hook\x85",
        "http://93.184.216.34/hook\u2028",
        "http://93.184.216.34/hook\xa0",
        "http://93.184.216.34\\@127.0.0.1/hook",
        "http://93.184.216.34/" + "a" * 5000,
    ],
)
def test_control_characters_spaces_and_backslashes_are_refused(url: str) -> None:
    with pytest.raises(ValidationError) as refused:
        check_callback_url(url, frozenset({"93.184.216.34:*", "127.0.0.1:*"}))
    assert refused.value.field == "callback_url"


@pytest.mark.parametrize(
    ("entries", "url", "passes"),
    [
        ({"localhost"}, "http://localhost/hook", True),
        ({"localhost"}, "https://localhost/hook", True),
        ({"localhost"}, "http://localhost:443/hook", True),
        ({"localhost"}, "http://localhost:6379/hook", False),
        ({"localhost"}, "https://localhost:8443/hook", False),
        ({"localhost:8080"}, "http://localhost:8080/hook", True),
        ({"localhost:8080"}, "http://localhost/hook", False),
        ({"localhost:8080", "localhost:9090"}, "http://localhost:9090/", True),
        ({"localhost:*"}, "http://localhost:6379/", True),
        ({"127.0.0.1:9000"}, "http://127.0.0.1:9000/", True),
        ({"127.0.0.1:9000"}, "http://127.0.0.1:9001/", False),
        ({"[::1]:8443"}, "https://[::1]:8443/", True),
        ({"[::1]:8443"}, "https://[::1]/", False),
        ({"[0:0::1]"}, "https://[::1]/", True),
        ({"::1"}, "http://[::1]/", True),
        ({"::1"}, "http://[::1]:81/", False),
        ({"[::1]:*"}, "http://[::1]:81/", True),
        ({"HOOKS.internal.:8080"}, "http://hooks.INTERNAL:8080/", True),
    ],
)
def test_allow_list_entries_may_name_a_port(entries: set[str], url: str, passes: bool) -> None:
    allow = frozenset(entries)
    if passes:
        assert pin_callback_url(url, allow) == PinnedURL(url)
    else:
        with pytest.raises(ValidationError, match="host:port"):
            pin_callback_url(url, allow)


@pytest.mark.parametrize("entry", ["host:0", "host:65536", "host:http", "[::1", "[nope]:80", "a/b", "u@h"])
def test_bad_allow_list_entries_name_the_variable(entry: str) -> None:
    with pytest.raises(ConfigError) as bad:
        validate_allow_hosts([entry])
    assert bad.value.key == "SWELL_CALLBACK_ALLOW_HOSTS" and repr(entry) in bad.value.message


def test_validated_allow_lists_are_normalised() -> None:
    assert validate_allow_hosts([" LocalHost:8080 ", "", "[::1]"]) == frozenset({"localhost:8080", "[::1]"})


@pytest.mark.anyio
async def test_a_resolver_that_hangs_fails_only_its_own_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name whose lookup never answers is a 422 after the deadline; other checks go on meanwhile."""
    hang = threading.Event()
    real = socket.getaddrinfo

    def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "hangs.example.com":
            hang.wait(10)
        return (
            [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 0))]
            if "example" in host
            else real(host, *args, **kwargs)
        )

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    resolver = CallbackResolver(threads=4, timeout=0.3)
    try:
        hung = [
            asyncio.create_task(resolver.check(f"http://hangs.example.com/{n}", frozenset()))
            for n in range(3)
        ]
        fine = await resolver.pin("http://ok.example.com/hook", frozenset())
        assert fine == PinnedURL(
            "http://93.184.216.34/hook", host="ok.example.com", server_name="ok.example.com"
        )
        for task in hung:
            with pytest.raises(ValidationError, match=r"did not resolve within 0\.3 s") as slow:
                await task
            assert slow.value.field == "callback_url"
        assert resolver.timeouts == 3
        with pytest.raises(ValidationError, match="character"):  # refused before any thread
            await resolver.check("http://ok.example.com/\r\n", frozenset())
    finally:
        hang.set()
        resolver.close()


@pytest.mark.anyio
async def test_a_swamped_resolver_refuses_at_once_with_503(monkeypatch: pytest.MonkeyPatch) -> None:
    hang = threading.Event()
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: hang.wait(10) and [])
    resolver = CallbackResolver(threads=1, timeout=5.0, max_pending=2)
    try:
        waiting = [
            asyncio.create_task(resolver.check(f"http://h{n}.example.com/", frozenset())) for n in range(2)
        ]
        await asyncio.sleep(0.05)
        with pytest.raises(Unavailable) as swamped:
            await resolver.check("http://h3.example.com/", frozenset())
        assert swamped.value.status_code == 503 and swamped.value.retry_after == 5.0
    finally:
        hang.set()
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        resolver.close()
