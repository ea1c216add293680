"""Callback URLs that would reach private networks are refused, unless their host is allowed."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from swell.core.errors import ValidationError
from swell.gateway.urls import PinnedURL, check_callback_url, is_public, pin_callback_url


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
    allowed = frozenset({"localhost", "127.0.0.1"})
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
