"""Listings without results and with a cursor, re-driving, bulk cancel, idempotency conflicts, and a
files route that serves only regular files inside the job's own folder."""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest

from tests.gateway.helpers import Gateway, complete_in_thread

pytestmark = pytest.mark.anyio


def job(service: str = "echo", **fields: Any) -> dict[str, Any]:
    return {"service": service, "input": {"n": 1}, **fields}


async def test_listings_leave_results_out_unless_asked(client: httpx.AsyncClient, gateway: Gateway) -> None:
    job_id = (await client.post("/v1/jobs", json=job())).json()["id"]
    complete_in_thread(gateway.queue, "echo", {"big": "x" * 1000}, after=0).join()
    (plain,) = (await client.get("/v1/jobs")).json()["jobs"]
    assert plain["id"] == job_id and plain["state"] == "succeeded" and "result" not in plain
    (full,) = (await client.get("/v1/jobs", params={"include": "result"})).json()["jobs"]
    assert full["result"] == {"big": "x" * 1000}
    bad = await client.get("/v1/jobs", params={"include": "input"})
    assert bad.status_code == 422 and bad.json()["field"] == "include"


async def test_pages_follow_the_cursor_to_the_end(client: httpx.AsyncClient) -> None:
    ids = [(await client.post("/v1/jobs", json=job(input={"n": n}))).json()["id"] for n in range(7)]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/jobs", params=params)).json()
        seen += [j["id"] for j in page["jobs"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1] and pages == 3
    unknown = await client.get("/v1/jobs", params={"cursor": "no-such-job"})
    assert unknown.status_code == 422 and unknown.json()["field"] == "cursor"


async def test_retry_re_drives_failed_and_cancelled_jobs_and_refuses_a_queued_one(
    client: httpx.AsyncClient, gateway: Gateway
) -> None:
    failed = (await client.post("/v1/jobs", json=job())).json()["id"]
    assert (await client.post(f"/v1/jobs/{failed}/retry")).status_code == 409, "queued: nothing to re-drive"
    (leased,) = gateway.queue.lease("echo", "w", max_jobs=1)
    gateway.queue.fail(leased.id, "w", "bad input", retryable=False)
    assert (await client.get(f"/v1/jobs/{failed}")).json()["state"] == "failed"

    retried = await client.post(f"/v1/jobs/{failed}/retry")
    assert retried.status_code == 202 and retried.headers["location"] == f"/v1/jobs/{failed}"
    assert (retried.json()["state"], retried.json()["attempts"]) == ("queued", 0)

    cancelled = (await client.post("/v1/jobs", json=job())).json()["id"]
    await client.delete(f"/v1/jobs/{cancelled}")
    assert (await client.post(f"/v1/jobs/{cancelled}/retry")).json()["state"] == "queued"
    assert (await client.post("/v1/jobs/nope/retry")).status_code == 404


async def test_bulk_cancel_takes_only_the_named_services_queued_jobs(
    client: httpx.AsyncClient, gateway: Gateway
) -> None:
    echo = [(await client.post("/v1/jobs", json=job())).json()["id"] for _ in range(3)]
    small = (await client.post("/v1/jobs", json=job("small"))).json()["id"]
    (running,) = gateway.queue.lease("echo", "w", max_jobs=1)
    cancelled = await client.delete("/v1/jobs", params={"service": "echo"})
    assert cancelled.status_code == 200 and cancelled.json() == {"cancelled": 2}
    states = {i: (await client.get(f"/v1/jobs/{i}")).json()["state"] for i in [*echo, small]}
    assert states[running.id] == "leased" and states[small] == "queued"
    assert sorted(s for i, s in states.items() if i in echo) == ["cancelled", "cancelled", "leased"]
    missing = await client.delete("/v1/jobs")
    assert missing.status_code == 422 and missing.json()["field"] == "service"
    assert (await client.delete("/v1/jobs", params={"service": "nope"})).status_code == 404


async def test_a_reused_idempotency_key_with_another_input_is_409(client: httpx.AsyncClient) -> None:
    first = await client.post("/v1/jobs", json=job(idempotency_key="k", input={"n": 1}))
    same = await client.post("/v1/jobs", json=job(idempotency_key="k", input={"n": 1}))
    other = await client.post("/v1/jobs", json=job(idempotency_key="k", input={"n": 2}))
    assert first.status_code == same.status_code == 202 and same.json()["id"] == first.json()["id"]
    assert other.status_code == 409
    assert (other.json()["error"], other.json()["field"]) == ("Conflict", "idempotency_key")


async def test_the_files_route_serves_only_regular_files_in_the_jobs_folder(
    client: httpx.AsyncClient, gateway: Gateway
) -> None:
    job_id = (await client.post("/v1/jobs", json=job())).json()["id"]
    files = gateway.settings.data_dir / "files"
    folder = files / job_id
    folder.mkdir(parents=True)
    (folder / "out.png").write_bytes(b"\x89PNG" + bytes(300_000))
    (folder / "empty.txt").write_bytes(b"")
    (gateway.settings.data_dir / "outside.txt").write_text("secret")
    (folder / "link.txt").symlink_to(gateway.settings.data_dir / "outside.txt")
    (folder / "sub").mkdir()
    os.mkfifo(folder / "pipe")

    served = await client.get(f"/v1/jobs/{job_id}/files/out.png")
    assert served.status_code == 200 and served.content == b"\x89PNG" + bytes(300_000)
    assert served.headers["content-type"] == "image/png"
    assert served.headers["x-content-type-options"] == "nosniff"
    empty = await client.get(f"/v1/jobs/{job_id}/files/empty.txt")
    assert empty.status_code == 200 and empty.content == b""
    for name in ("link.txt", "sub", "pipe", "missing"):
        refused = await client.get(f"/v1/jobs/{job_id}/files/{name}")
        assert refused.status_code == 404 and refused.json()["field"] == "name", name
        assert b"secret" not in refused.content

    other = (await client.post("/v1/jobs", json=job())).json()["id"]
    (files / other).symlink_to(folder)  # a job folder that is itself a link is not followed either
    assert (await client.get(f"/v1/jobs/{other}/files/out.png")).status_code == 404
