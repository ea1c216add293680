"""The request filter: the block list's matching, the hook, its configuration, and refusals at the
jobs API (in-process ASGI over a real SQLite file) counted in `/metrics`. The OpenAI and A1111
doors' refusals are tested with their own clients in test_openai.py and test_a1111.py."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from swell.core.errors import ConfigError, Unavailable
from swell.gateway.filtering import (
    BlockList,
    FilterConfig,
    Refused,
    RequestFilter,
    builtin_terms,
    generated_texts,
    load_hook,
    normalised,
)
from tests.gateway.helpers import SERVICES, MakeGateway

pytestmark = pytest.mark.anyio

HOOK_CALLS: list[tuple[str, dict[str, Any]]] = []
HOOK_THREADS: list[str] = []


def refuse_wolves(service: str, payload: dict[str, Any]) -> str | None:
    """A plain hook (run in a worker thread): refuses prompts about wolves."""
    HOOK_CALLS.append((service, payload))
    HOOK_THREADS.append(threading.current_thread().name)
    return "wolves are not allowed here" if "wolf" in str(payload.get("prompt", "")) else None


async def refuse_async(service: str, payload: dict[str, Any]) -> str | None:
    await asyncio.sleep(0)
    return "no sheep" if "sheep" in str(payload.get("prompt", "")) else None


def broken_hook(service: str, payload: dict[str, Any]) -> str | None:
    raise RuntimeError("the moderation service is down")


def odd_hook(service: str, payload: dict[str, Any]) -> Any:
    return 42


NOT_CALLABLE = "just a string"


def with_filter(filter_config: dict[str, Any]) -> dict[str, Any]:
    return {**SERVICES, "gateway": {**SERVICES["gateway"], "filter": filter_config}}


def refused_count(metrics: str, service: str, door: str) -> float:
    wanted = f'swell_requests_refused_total{{door="{door}",service="{service}"}}'
    for line in metrics.splitlines():
        if line.startswith(wanted):
            return float(line.split()[-1])
    return 0.0


# -- matching -----------------------------------------------------------------------------------------


def test_normalisation_folds_case_width_accents_and_separators() -> None:
    assert normalised("ＣＨＩＬＤ_Porn!!") == " child porn "
    assert normalised("chíld—porn") == " child porn "
    assert normalised("  a\tb\n") == " a b "


def test_terms_match_whole_words_only() -> None:
    blocked = BlockList(["csam", "child porn"])
    assert blocked.find("some CSAM here") == "csam"
    assert blocked.find("Child-Porn") == "child porn"
    assert blocked.find("ｃｈｉｌｄ   pórn") == "child porn"
    assert blocked.find("scsam and csams") is None  # inside longer words
    assert blocked.find("a child, a porn star") is None  # not the sequence
    assert blocked.find("") is None


def test_an_empty_list_blocks_nothing_and_punctuation_terms_are_dropped() -> None:
    assert BlockList([]).find("anything at all") is None
    blocked = BlockList(["!!!", "  ", "ok term"])
    assert len(blocked) == 1 and blocked.find("!!!") is None


def test_the_builtin_list_is_loaded_from_the_package() -> None:
    terms = builtin_terms()
    assert "csam" in terms and all(not t.startswith("#") for t in terms)
    assert RequestFilter(terms).reason("svc", {"prompt": "CSAM"}) is not None


def test_only_what_is_generated_from_is_checked() -> None:
    payload = {
        "prompt": "p",
        "negative_prompt": "csam",  # what must not be shown: never checked
        "messages": [{"role": "user", "content": "m"}, {"content": [{"type": "text", "text": "part"}]}],
        "texts": ["t0", 5],
    }
    assert list(generated_texts(payload)) == [
        ("input.prompt", "p"),
        ("input.messages.0.content", "m"),
        ("input.messages.1.content", "part"),
        ("input.texts.0", "t0"),
    ]
    assert list(generated_texts({"prompt": ["a", "b"]})) == [("input.prompt.0", "a"), ("input.prompt.1", "b")]
    assert RequestFilter(["csam"]).reason("svc", payload) is None


def test_a_refusal_names_the_field_and_the_term() -> None:
    refusal = RequestFilter(["bad word"]).reason("svc", {"messages": [{"content": "a BAD word"}]})
    assert isinstance(refusal, Refused) and refusal.status_code == 403
    assert refusal.field == "input.messages.0.content" and "'bad word'" in refusal.message


# -- the hook ---------------------------------------------------------------------------------------------


async def test_a_plain_hook_runs_off_the_event_loop() -> None:
    HOOK_CALLS.clear()
    HOOK_THREADS.clear()
    check = RequestFilter([], load_hook("tests.gateway.test_filtering:refuse_wolves"))
    await check.check("svc", {"prompt": "a cat"})
    with pytest.raises(Refused, match="wolves are not allowed here"):
        await check.check("svc", {"prompt": "a wolf"})
    assert HOOK_CALLS == [("svc", {"prompt": "a cat"}), ("svc", {"prompt": "a wolf"})]
    assert all(name != threading.main_thread().name for name in HOOK_THREADS)


async def test_a_coroutine_hook_is_awaited() -> None:
    check = RequestFilter([], load_hook("tests.gateway.test_filtering:refuse_async"))
    await check.check("svc", {"prompt": "a goat"})
    with pytest.raises(Refused, match="no sheep"):
        await check.check("svc", {"prompt": "a sheep"})


async def test_a_failing_hook_refuses_nothing_and_answers_503() -> None:
    for name in ("broken_hook", "odd_hook"):
        check = RequestFilter([], load_hook(f"tests.gateway.test_filtering:{name}"))
        with pytest.raises(Unavailable, match="the request filter failed"):
            await check.check("svc", {"prompt": "fine"})


async def test_the_list_is_checked_before_the_hook() -> None:
    HOOK_CALLS.clear()
    check = RequestFilter(["csam"], load_hook("tests.gateway.test_filtering:refuse_wolves"))
    with pytest.raises(Refused, match="blocked term"):
        await check.check("svc", {"prompt": "csam wolf"})
    assert HOOK_CALLS == []


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_module_anywhere:judge", "cannot import"),
        ("tests.gateway.test_filtering:missing", "has no 'missing'"),
        ("tests.gateway.test_filtering:NOT_CALLABLE", "is not callable"),
    ],
)
def test_a_bad_hook_is_a_config_error_naming_the_key(target: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        RequestFilter.of(FilterConfig(hook=target))
    assert error.value.key == "gateway.filter.hook"


def test_the_config_builds_the_list(tmp_path: Path) -> None:
    terms = tmp_path / "terms.txt"
    terms.write_text("# house rules\nforbidden thing\n\n", encoding="utf-8")
    own = RequestFilter.of(FilterConfig(blocked_terms=["mine"], blocked_terms_file=str(terms)))
    assert own.blocked.terms == ["forbidden thing", "mine"]
    assert RequestFilter.of(FilterConfig(blocked_terms=[])).blocked.find("csam") is None
    assert RequestFilter.of(FilterConfig()).blocked.find("csam") == "csam"
    with pytest.raises(ConfigError) as error:
        RequestFilter.of(FilterConfig(blocked_terms_file=str(tmp_path / "missing.txt")))
    assert error.value.key == "gateway.filter.blocked_terms_file"


def test_a_malformed_hook_is_refused_when_the_config_loads() -> None:
    from swell.core.config import parse_config

    with pytest.raises(ConfigError) as error:
        parse_config(with_filter({"hook": "not a target"}))
    assert error.value.key == "gateway.filter.hook"


# -- at the jobs API ----------------------------------------------------------------------------------


async def test_the_jobs_api_refuses_before_queueing_and_counts_it(make_gateway: MakeGateway) -> None:
    gateway = make_gateway(raw=with_filter({"blocked_terms": ["forbidden thing"]}))
    async with gateway.client() as client:
        refused = await client.post(
            "/v1/jobs", json={"service": "echo", "input": {"prompt": "A Forbidden-Thing"}}
        )
        assert refused.status_code == 403
        assert refused.json() == {
            "error": "Refused",
            "message": "input.prompt holds a blocked term ('forbidden thing'); the request is refused",
            "field": "input.prompt",
        }
        fine = await client.post("/v1/jobs", json={"service": "echo", "input": {"prompt": "a fine thing"}})
        assert fine.status_code == 202
        negative = {"prompt": "a cat", "negative_prompt": "forbidden thing"}
        assert (await client.post("/v1/jobs", json={"service": "echo", "input": negative})).status_code == 202
        metrics = (await client.get("/metrics")).text
    assert refused_count(metrics, "echo", "jobs") == 1
    assert [job.input for job in gateway.queue.jobs(service="echo", limit=10)] == [
        negative,
        {"prompt": "a fine thing"},
    ]


async def test_the_builtin_list_applies_by_default(make_gateway: MakeGateway) -> None:
    gateway = make_gateway()
    async with gateway.client() as client:
        response = await client.post("/v1/jobs", json={"service": "echo", "input": {"prompt": "csam"}})
    assert response.status_code == 403 and response.json()["field"] == "input.prompt"
    assert gateway.queue.jobs(service="echo", limit=10) == []
