"""The `/v1` API through the in-process transport, over a real SQLite queue."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from swell.core.errors import ValidationError
from swell.core.replicas import ReplicaInfo, ReplicaState
from swell.gateway.files import plain_name
from swell.queue.base import Outcome, Update
from tests.gateway.helpers import Gateway, MakeGateway, complete_in_thread

pytestmark = pytest.mark.anyio


def job(service: str = "echo", **fields: Any) -> dict[str, Any]:
    return {"service": service, "input": {"n": 1}, **fields}


async def test_submit_acknowledges_and_the_job_can_be_read(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/jobs", json=job(priority="high", tenant="acme"))
    assert response.status_code == 202
    body = response.json()
    assert (body["state"], body["priority"], body["tenant"], body["max_attempts"]) == (
        "queued",
        "high",
        "acme",
        2,
    )
    assert response.headers["location"] == f"/v1/jobs/{body['id']}"
    read = await client.get(f"/v1/jobs/{body['id']}")
    assert read.status_code == 200 and read.json() == body


async def test_idempotent_repeat_returns_the_same_job(client: httpx.AsyncClient, gateway: Gateway) -> None:
    first = await client.post("/v1/jobs", json=job(idempotency_key="k-1"))
    again = await client.post("/v1/jobs", json=job(idempotency_key="k-1"))
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert gateway.queue.depth()["echo"] == {"queued": 1}


async def test_wait_answers_200_with_the_result(client: httpx.AsyncClient, gateway: Gateway) -> None:
    worker = complete_in_thread(gateway.queue, "echo", {"n": 2}, after=0.2)
    response = await client.post("/v1/jobs", json=job(wait=5))
    worker.join()
    assert response.status_code == 200
    assert (response.json()["state"], response.json()["result"]) == ("succeeded", {"n": 2})


async def test_wait_that_runs_out_answers_202(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/jobs", json=job(wait=0.05))
    assert response.status_code == 202 and response.json()["state"] == "queued"


async def test_a_repeat_of_a_finished_job_answers_200(client: httpx.AsyncClient, gateway: Gateway) -> None:
    first = await client.post("/v1/jobs", json=job(idempotency_key="done"))
    complete_in_thread(gateway.queue, "echo", {"ok": True}, after=0).join()
    again = await client.post("/v1/jobs", json=job(idempotency_key="done"))
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert again.json()["result"] == {"ok": True}


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (job("nope"), 404, "service"),
        (job(priority="urgent"), 422, "priority"),
        (job(colour="red"), 422, "colour"),
        ({"service": "echo", "input": [1, 2]}, 422, "input"),
        ({"input": {}}, 422, "service"),
        (job(wait=6), 422, "wait"),
        (job(wait=-1), 422, "wait"),
        (job(idempotency_key="k" * 201), 422, "idempotency_key"),
        (job(idempotency_key=""), 422, "idempotency_key"),
        (job(callback_url="http://127.0.0.1:9/hook"), 422, "callback_url"),
        (job(callback_url="ftp://example.com/hook"), 422, "callback_url"),
        ([1, 2, 3], 422, "body"),
    ],
)
async def test_bad_submits_name_the_field(
    client: httpx.AsyncClient, body: Any, status: int, field: str
) -> None:
    response = await client.post("/v1/jobs", json=body)
    assert response.status_code == status, response.text
    assert response.json()["field"] == field


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"\xff\xfe{}",
        b"[" * 2000 + b"]" * 2000,
        b'{"service": "echo", "input": {"x": NaN}}',
        b'{"service": "echo", "input": {"x": "\\ud800"}}',
    ],
)
async def test_malformed_or_non_strict_json_names_the_body(client: httpx.AsyncClient, raw: bytes) -> None:
    response = await client.post("/v1/jobs", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 422)
    assert response.json()["field"] in ("body", "input")


async def test_a_body_without_a_json_content_type_is_refused_plainly(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/jobs", content=json.dumps(job()).encode())
    assert response.status_code == 422 and response.json()["field"] == "body"
    assert "Content-Type: application/json" in response.json()["message"]


async def test_a_full_queue_answers_429_with_retry_after(client: httpx.AsyncClient) -> None:
    for _ in range(2):
        assert (await client.post("/v1/jobs", json=job("small"))).status_code == 202
    refused = await client.post("/v1/jobs", json=job("small"))
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"] == "QueueFull"


async def test_bodies_over_the_limit_get_413_declared_or_streamed(client: httpx.AsyncClient) -> None:
    big = job(input={"text": "x" * 5000})
    declared = await client.post("/v1/jobs", json=big)
    assert declared.status_code == 413 and declared.json()["field"] == "body"

    async def chunks() -> Any:
        for _ in range(10):
            yield b" " * 1000

    streamed = await client.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert "content-length" not in streamed.request.headers
    assert streamed.status_code == 413


async def test_v1_needs_the_key(gateway: Gateway) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dGVzdC1rZXk="}):
        async with gateway.client(headers) as anonymous:
            for method, path in (("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/services")):
                response = await anonymous.request(method, path, json=job())
                assert response.status_code == 401, (headers, path)
                assert response.headers["www-authenticate"] == "Bearer"
    async with gateway.client({"Authorization": "Bearer test-kéy".encode("latin-1")}) as non_ascii:
        assert (await non_ascii.get("/v1/jobs")).status_code == 401


async def test_open_routes_need_no_key(gateway: Gateway) -> None:
    async with gateway.client({}) as anonymous:
        assert (await anonymous.get("/healthz")).json() == {"status": "ok"}
        assert (await anonymous.get("/metrics")).status_code == 200
        schema = (await anonymous.get("/openapi.json")).json()
        assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/services"} <= set(schema["paths"])
        assert (await anonymous.get("/docs")).status_code == 200


async def test_no_auth_lets_everyone_in(make_gateway: MakeGateway) -> None:
    gateway = make_gateway(auth=False, api_key=None)
    async with gateway.client({}) as anonymous:
        assert (await anonymous.post("/v1/jobs", json=job())).status_code == 202


async def test_list_filters_and_bounds(client: httpx.AsyncClient) -> None:
    ids = [(await client.post("/v1/jobs", json=job(service))).json()["id"] for service in ("echo", "small")]
    listed = (await client.get("/v1/jobs")).json()["jobs"]
    assert [j["id"] for j in listed] == ids[::-1]
    only = (await client.get("/v1/jobs", params={"service": "small", "state": "queued"})).json()["jobs"]
    assert [j["id"] for j in only] == ids[1:]
    assert (await client.get("/v1/jobs", params={"state": "succeeded"})).json() == {
        "jobs": [],
        "next_cursor": None,
    }
    assert len((await client.get("/v1/jobs", params={"limit": 1})).json()["jobs"]) == 1
    for params, field in (({"limit": 1001}, "limit"), ({"limit": 0}, "limit"), ({"state": "odd"}, "state")):
        response = await client.get("/v1/jobs", params=params)
        assert response.status_code == 422 and response.json()["field"] == field


async def test_cancel_a_queued_job_at_once_and_a_running_one_by_request(
    client: httpx.AsyncClient, gateway: Gateway
) -> None:
    queued = (await client.post("/v1/jobs", json=job())).json()["id"]
    cancelled = await client.delete(f"/v1/jobs/{queued}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    refused = await client.delete(f"/v1/jobs/{queued}")
    assert refused.status_code == 409 and refused.json()["error"] == "IllegalTransition"

    running = (await client.post("/v1/jobs", json=job())).json()["id"]
    assert [j.id for j in gateway.queue.lease("echo", "w", max_jobs=1)] == [running]
    asked = await client.delete(f"/v1/jobs/{running}")
    assert asked.status_code == 202
    assert (asked.json()["state"], asked.json()["cancel_requested"]) == ("leased", True)
    assert gateway.queue.cancel_requested([running]) == {running}
    gateway.queue.settle("w", [Outcome.cancelled(running)])
    assert (await client.get(f"/v1/jobs/{running}")).json()["state"] == "cancelled"
    assert (await client.delete(f"/v1/jobs/{running}")).status_code == 409


async def test_a_running_job_shows_its_progress(client: httpx.AsyncClient, gateway: Gateway) -> None:
    job_id = (await client.post("/v1/jobs", json=job())).json()["id"]
    gateway.queue.lease("echo", "w", max_jobs=1)
    assert "progress" not in (await client.get(f"/v1/jobs/{job_id}")).json()
    gateway.queue.report("w", [Update(job_id, fraction=0.4, message="step 8/20")])
    shown = (await client.get(f"/v1/jobs/{job_id}")).json()
    assert shown["progress"] == {"fraction": 0.4, "message": "step 8/20"}
    listed = (await client.get("/v1/jobs")).json()["jobs"][0]
    assert listed["progress"]["fraction"] == 0.4
    missing = await client.get("/v1/jobs/no-such-job")
    assert missing.status_code == 404 and missing.json()["field"] == "id"
    assert (await client.delete("/v1/jobs/no-such-job")).status_code == 404


async def test_job_files_are_served_and_paths_cannot_escape(
    client: httpx.AsyncClient, gateway: Gateway
) -> None:
    job_id = (await client.post("/v1/jobs", json=job())).json()["id"]
    folder = gateway.settings.data_dir / "files" / job_id
    folder.mkdir(parents=True)
    (folder / "out.png").write_bytes(b"\x89PNG-bytes")
    (gateway.settings.data_dir / "files" / "secret.txt").write_text("no")

    served = await client.get(f"/v1/jobs/{job_id}/files/out.png")
    assert served.status_code == 200 and served.content == b"\x89PNG-bytes"
    assert (await client.get(f"/v1/jobs/{job_id}/files/missing.png")).status_code == 404
    assert (await client.get("/v1/jobs/nope/files/out.png")).status_code == 404
    for name in ("..secret.txt", "a\\..\\b", "%2E%2E%2Fsecret.txt", "..%2Fsecret.txt"):
        response = await client.get(f"/v1/jobs/{job_id}/files/{name}")
        assert response.status_code in (404, 422), name
        assert response.content != b"no"


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "a\\b", "..%2F", "x..y", "nul\x00"])
def test_file_names_must_be_one_plain_component(name: str) -> None:
    assert not plain_name(name)
    assert plain_name("image-0.png")


async def test_services_show_depth_replicas_and_extra_keys(make_gateway: MakeGateway) -> None:
    gateway = make_gateway(extra_services=lambda: {"echo": {"plan": {"replicas": 2}}})
    gateway.replicas.items = [
        ReplicaInfo(id="r1", service="echo", state=ReplicaState.READY, pid=42, model="m", jobs_done=3),
        ReplicaInfo(id="r2", service="small", state=ReplicaState.LOADING, pid=43),
    ]
    async with gateway.client() as client:
        await client.post("/v1/jobs", json=job())
        await client.post("/v1/jobs", json=job())
        gateway.queue.lease("echo", "w", max_jobs=1)
        services = {s["name"]: s for s in (await client.get("/v1/services")).json()["services"]}
    echo = services["echo"]
    assert echo["queue"] == {"queued": 1, "leased": 1}
    assert (echo["engine"], echo["replicas_min"], echo["replicas_max"], echo["plan"]) == (
        "callable",
        1,
        1,
        {"replicas": 2},
    )
    assert [(r["id"], r["pid"], r["state"], r["jobs_done"]) for r in echo["replicas"]] == [
        ("r1", 42, "ready", 3)
    ]
    assert services["small"]["queue"] == {} and services["small"]["replicas_max"] == 3
    assert "plan" not in services["small"]


async def test_allowed_callback_hosts_pass(make_gateway: MakeGateway) -> None:
    gateway = make_gateway(callback_allow_hosts=frozenset({"127.0.0.1:9"}))
    async with gateway.client() as client:
        response = await client.post("/v1/jobs", json=job(callback_url="http://127.0.0.1:9/hook"))
    assert response.status_code == 202
    assert response.json()["webhook"] == {"state": "waiting", "attempts": 0, "error": None}


async def test_the_engine_validator_names_the_field(
    make_gateway: MakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, dict[str, Any], dict[str, Any]]] = []

    def validate(engine: str, options: dict[str, Any], payload: dict[str, Any]) -> None:
        calls.append((engine, options, payload))
        if payload.get("texts") == "boom":
            raise RuntimeError("a validator bug")
        if not isinstance(payload.get("texts"), list):
            raise ValidationError("texts must be a list", field="input.texts")

    monkeypatch.setattr("swell.gateway.app._engine_validator", lambda: validate)
    gateway = make_gateway()
    async with gateway.client() as client:
        bad = await client.post("/v1/jobs", json={"service": "echo", "input": {"texts": "x"}})
        buggy = await client.post("/v1/jobs", json={"service": "echo", "input": {"texts": "boom"}})
        good = await client.post("/v1/jobs", json={"service": "echo", "input": {"texts": ["a"]}})
    assert bad.status_code == 422 and bad.json()["field"] == "input.texts"
    assert buggy.status_code == 422 and buggy.json()["field"] == "input"
    assert good.status_code == 202
    assert calls[0] == ("callable", {"function": "builtins:dict"}, {"texts": "x"})
    assert gateway.queue.depth()["echo"] == {"queued": 1}


async def test_unknown_routes_and_methods_answer_in_the_error_shape(client: httpx.AsyncClient) -> None:
    missing = await client.get("/v2/nothing")
    assert missing.status_code == 404 and missing.json()["error"] == "NotFound"
    wrong = await client.put("/v1/jobs")
    assert wrong.status_code == 405 and wrong.json()["error"] == "MethodNotAllowed"
