"""The OpenAI door driven by the official `openai` SDK against a real uvicorn on loopback, over a
real SQLite queue: chat and completions answered by a real worker process running the tiny LLM
through the transformers engine (its text is noise; only the protocol is checked), embeddings by an
in-test worker thread that leases the embeddings service's jobs and answers known vectors, images by
a second real worker running the diffusers engine on a tiny random SD model."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from swell.core.config import Settings, parse_config
from swell.core.jobs import JobSpec, JobState
from swell.gateway.app import create_app
from swell.gateway.limits import GatewayLimits
from swell.gateway.protocol import serving_config
from swell.queue.base import Outcome, QueueBackend, Update, open_queue
from tests.gateway.helpers import API_KEY
from tests.support import free_port, wait_for

openai = pytest.importorskip("openai")
pytest.importorskip("transformers")

DIMENSIONS = 8


def config(model: Path, images: Path) -> dict[str, Any]:
    image_options = {
        "path": str(images),
        "device": "cpu",
        "warmup": False,
        "steps": 2,
        "width": 64,
        "height": 64,
    }
    return {
        "services": [
            {"name": "img", "engine": "diffusers", "options": image_options, "lease_seconds": 10.0},
            {
                "name": "llm",
                "engine": "transformers",
                "options": {"path": str(model), "max_tokens": 2000},
                "max_batch_size": 4,
                "lease_seconds": 5.0,
            },
            {"name": "emb", "engine": "embeddings", "options": {}},
            {
                "name": "full",
                "engine": "callable",
                "options": {"function": "builtins:dict"},
                "queue_limit": 1,
            },
            {"name": "broken", "engine": "callable", "options": {"function": "builtins:dict"}},
        ],
        "gateway": {"max_wait_seconds": 120},
    }


def vector(text: str) -> list[float]:
    """The in-test embedding of `text`: exact in float32 (multiples of 1/256)."""
    digest = hashlib.sha256(text.encode()).digest()
    return [byte / 256 for byte in digest[:DIMENSIONS]]


class Server:
    def __init__(self, base: str, queue: QueueBackend, tmp: Path, services: list[dict[str, Any]]) -> None:
        self.base = base
        self.queue = queue
        self.tmp = tmp
        self.services = services

    def client(self, key: str = API_KEY, retries: int = 0) -> Any:
        return openai.OpenAI(base_url=f"{self.base}/v1", api_key=key, max_retries=retries, timeout=120)

    def job(self, answer_id: str) -> Any:
        return self.queue.get(answer_id.split("-", 1)[1])


def spawn_worker(tmp: Path, service: dict[str, Any], replica: str = "w1") -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "swell.worker",
        "--queue", f"sqlite:///{tmp / 'q.db'}",
        "--service", json.dumps(service),
        "--replica-id", replica,
        "--data-dir", str(tmp),
    ]  # fmt: skip
    return subprocess.Popen(command)


def embed_forever(queue: QueueBackend, stop: threading.Event) -> None:
    """The embeddings service's stand-in worker: each job's texts to `vector`."""
    while not stop.is_set():
        for job in queue.lease("emb", "emb-worker", max_jobs=4):
            texts = job.input["texts"]
            result = {"embeddings": [vector(t) for t in texts], "dimensions": DIMENSIONS}
            queue.complete(job.id, "emb-worker", result)
        stop.wait(0.02)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from swell.models.tiny_llm import make_tiny_llm

    tmp = tmp_path_factory.mktemp("openai")
    raw = config(make_tiny_llm(tmp / "llm"), tmp / "sd")  # the SD model is made by `image_worker`
    parsed = parse_config(raw)
    queue = open_queue(f"sqlite:///{tmp / 'q.db'}")
    # Shedding on loop lag is tested in test_limits; here a busy CI machine must not turn answers into 503s.
    limits = GatewayLimits(max_loop_lag_seconds=60.0)
    app = create_app(parsed, Settings(data_dir=tmp, api_key=API_KEY), queue, limits=limits)
    port = free_port()
    uv = uvicorn.Server(serving_config(app, "127.0.0.1", port, app.state.limits, lifespan="on"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    stop = threading.Event()
    embedder = threading.Thread(target=embed_forever, args=(queue, stop), daemon=True)
    embedder.start()
    services = [service.model_dump(mode="json") for service in parsed.services]
    worker = spawn_worker(tmp, services[1])
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{base}/healthz", timeout=1).status_code == 200, 20, "uvicorn")
        yield Server(base, queue, tmp, services)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        stop.set()
        embedder.join(10)
        uv.should_exit = True
        thread.join(10)
        queue.close()


@pytest.fixture(scope="module")
def image_worker(server: Server) -> Iterator[None]:
    """A real worker for `img`, on a tiny random SD model written now (only the image tests pay)."""
    pytest.importorskip("diffusers")
    from swell.models.tiny import make_tiny

    make_tiny("sd", server.tmp / "sd")
    worker = spawn_worker(server.tmp, server.services[0], replica="w-img")
    try:
        yield
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)


def refused(base: str, service: str, door: str) -> float:
    """The gateway's count of requests to `service` the request filter refused at `door`."""
    wanted = f'swell_requests_refused_total{{door="{door}",service="{service}"}}'
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(wanted):
            return float(line.split()[-1])
    return 0.0


def test_models_are_the_generating_services(server: Server) -> None:
    client = server.client()
    assert sorted(model.id for model in client.models.list()) == ["emb", "img", "llm"]
    assert client.models.retrieve("llm").owned_by == "swell"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("full")


def test_chat_completion_is_the_jobs_result(server: Server) -> None:
    answer = server.client().chat.completions.create(
        model="llm",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
        n=2,
        max_tokens=6,
        temperature=0.7,
        top_p=0.9,
        seed=7,
        stop=["\n\n"],
    )
    job = server.job(answer.id)
    assert job.state is JobState.SUCCEEDED and answer.object == "chat.completion"
    assert job.input["max_tokens"] == 6 and job.input["seed"] == 7 and job.input["n"] == 2
    assert [c.message.content for c in answer.choices] == [c["text"] for c in job.result["choices"]]
    assert [c.index for c in answer.choices] == [0, 1]
    assert all(
        c.finish_reason in ("stop", "length") and c.message.role == "assistant" for c in answer.choices
    )
    assert answer.usage.completion_tokens == job.result["usage"]["completion_tokens"] <= 12
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_max_completion_tokens_caps_the_job(server: Server) -> None:
    answer = server.client().chat.completions.create(
        model="llm", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=3, temperature=0
    )
    assert server.job(answer.id).input["max_tokens"] == 3
    assert answer.usage.completion_tokens <= 3


def test_streamed_chat_with_usage(server: Server) -> None:
    chunks = list(
        server.client().chat.completions.create(
            model="llm",
            messages=[{"role": "user", "content": "the cat"}],
            max_tokens=20,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    job = server.job(chunks[0].id)
    assert all(chunk.id == chunks[0].id and chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == job.result["choices"][0]["text"]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [job.result["choices"][0]["finish_reason"]]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == job.result["usage"]["completion_tokens"]
    assert all(c.usage is None for c in chunks[:-1])


def test_both_choices_of_n_2_stream_the_text_of_the_whole_answer(server: Server) -> None:
    """n=2, sampled, one seed: each choice streams through the worker on its own (the job's delta
    events carry its index) and adds up to what the same request answers whole."""
    request: dict[str, Any] = {
        "model": "llm",
        "messages": [{"role": "user", "content": "two tales"}],
        "n": 2,
        "max_tokens": 24,
        "temperature": 0.9,
        "seed": 11,
    }
    client = server.client()
    whole = client.chat.completions.create(**request)
    chunks = list(client.chat.completions.create(**request, stream=True))
    pieces = [(c.choices[0].index, c.choices[0].delta.content or "") for c in chunks if c.choices]
    streamed = ["".join(text for index, text in pieces if index == i) for i in (0, 1)]
    expected = [c.message.content for c in whole.choices]
    assert streamed == expected and all(expected), "the same seed gives the same two texts"
    assert expected[0] != expected[1], "two completions of their own"
    job = server.job(chunks[0].id)
    deltas = [e.data for e in server.queue.events(job.id) if e.kind == "delta"]
    by_index = ["".join(d["text"] for d in deltas if d.get("index", 0) == i) for i in (0, 1)]
    assert by_index == expected, "both came as deltas from the worker, not whole at the end"
    finishes = sorted(c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason)
    assert finishes == [0, 1]


def test_a_stream_ends_with_done_on_the_wire(server: Server) -> None:
    body = {"model": "llm", "prompt": "hello", "max_tokens": 5, "stream": True}
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.stream(
        "POST", f"{server.base}/v1/completions", json=body, headers=auth, timeout=60
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(chunk["object"] == "text_completion" for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_completions_whole_and_streamed(server: Server) -> None:
    client = server.client()
    whole = client.completions.create(model="llm", prompt="hello world", max_tokens=5, temperature=0)
    job = server.job(whole.id)
    assert whole.object == "text_completion" and whole.choices[0].text == job.result["choices"][0]["text"]
    stream = client.completions.create(
        model="llm", prompt="hello world", max_tokens=5, temperature=0, stream=True
    )
    streamed = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
    assert streamed == whole.choices[0].text, "greedy: the same prompt gives the same text"


def test_embeddings_in_both_encodings(server: Server) -> None:
    client = server.client()
    texts = ["a red dragon", "a blue knight"]
    floats = client.embeddings.create(model="emb", input=texts, encoding_format="float")
    assert [d.embedding for d in floats.data] == [vector(t) for t in texts]
    assert [d.index for d in floats.data] == [0, 1] and floats.model == "emb"
    default = client.embeddings.create(model="emb", input="a red dragon")  # the SDK asks for base64
    assert list(default.data[0].embedding) == vector("a red dragon")
    raw = httpx.post(
        f"{server.base}/v1/embeddings",
        json={"model": "emb", "input": "x", "encoding_format": "base64"},
        headers={"Authorization": f"Bearer {API_KEY}"},
    ).json()
    assert isinstance(raw["data"][0]["embedding"], str)
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model="emb", input=[[1, 2, 3]])
    assert refused.value.body["param"] == "input"


def test_error_classes(server: Server) -> None:
    with pytest.raises(openai.AuthenticationError) as unauthorised:
        server.client(key="wrong").models.list()
    assert unauthorised.value.body["code"] == "invalid_api_key"
    client = server.client()
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", **chat)
    assert missing.value.code == "model_not_found" and missing.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as hot:
        client.chat.completions.create(model="llm", temperature=5, **chat)
    assert hot.value.body["param"] == "temperature" and hot.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as json_mode:
        schema = {"name": "answer", "schema": {"type": "object"}}
        client.chat.completions.create(
            model="llm", response_format={"type": "json_schema", "json_schema": schema}, **chat
        )
    assert json_mode.value.body["param"] == "response_format"
    with pytest.raises(openai.BadRequestError) as too_many:
        client.chat.completions.create(model="llm", **{**chat, "max_tokens": 5000})
    assert too_many.value.body["param"] == "max_tokens"


def test_a_full_queue_is_a_rate_limit_with_retry_headers(server: Server) -> None:
    server.queue.submit(JobSpec("full", {"filler": True}))
    with pytest.raises(openai.RateLimitError) as limited:
        server.client().chat.completions.create(model="full", messages=[{"role": "user", "content": "hi"}])
    headers = limited.value.response.headers
    assert int(headers["retry-after"]) >= 1 and int(headers["retry-after-ms"]) >= 1
    assert limited.value.code == "rate_limit_exceeded"


def test_the_idempotency_key_reattaches_to_the_job(server: Server) -> None:
    client = server.client()
    ask = {"model": "llm", "messages": [{"role": "user", "content": "once"}], "max_tokens": 4}
    headers = {"Idempotency-Key": "openai-test-once"}
    first = client.chat.completions.create(**ask, extra_headers=headers)
    again = client.chat.completions.create(**ask, extra_headers=headers)
    assert again.id == first.id and again.choices[0].message.content == first.choices[0].message.content
    with pytest.raises(openai.ConflictError):
        client.chat.completions.create(**{**ask, "max_tokens": 5}, extra_headers=headers)


def test_a_client_that_leaves_a_stream_cancels_its_job(server: Server) -> None:
    """The job is held by this test (as a worker that never finishes would), so the cancel is seen
    whatever the machine's speed: the client reads one streamed token, leaves, and the door asks the
    job's worker to stop."""
    stream = server.client().chat.completions.create(
        model="broken", messages=[{"role": "user", "content": "go on"}], max_tokens=10, stream=True
    )
    leased: list[Any] = []
    wait_for(
        lambda: bool(leased.extend(server.queue.lease("broken", "w8", max_jobs=1)) or leased), 30, "a job"
    )
    job_id = leased[0].id
    server.queue.report("w8", [Update(job_id, delta="tok")])
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    stream.close()
    wait_for(lambda: job_id in server.queue.cancel_requested([job_id]), 30, "the cancel request")
    server.queue.settle("w8", [Outcome.cancelled(job_id)])
    assert server.queue.get(job_id).state is JobState.CANCELLED


def test_a_job_that_fails_mid_stream_is_an_error_event(server: Server) -> None:
    stream = server.client().chat.completions.create(
        model="broken", messages=[{"role": "user", "content": "hi"}], stream=True
    )

    leased: list[Any] = []
    wait_for(
        lambda: bool(leased.extend(server.queue.lease("broken", "w9", max_jobs=1)) or leased), 30, "a job"
    )
    server.queue.fail(leased[0].id, "w9", "the engine blew up", retryable=False)
    with pytest.raises(openai.APIError) as failed:
        list(stream)
    assert "the engine blew up" in failed.value.message


def test_a_client_that_stops_waiting_cancels_its_job(server: Server) -> None:
    body = {"model": "broken", "messages": [{"role": "user", "content": "wait"}]}
    headers = {"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": "openai-test-gone"}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base}/v1/chat/completions", json=body, headers=headers, timeout=0.5)
    (job,) = [
        j for j in server.queue.jobs(service="broken", limit=10) if j.idempotency_key == "openai-test-gone"
    ]
    wait_for(lambda: server.queue.get(job.id).state is JobState.CANCELLED, 30, "the cancel")


def rejected(base: str, service: str, reason: str) -> float:
    """The gateway's count of submits to `service` refused for `reason`, read from `/metrics`."""
    wanted = f'swell_jobs_rejected_total{{reason="{reason}",service="{service}"}}'
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(wanted):
            return float(line.split()[-1])
    return 0.0


def test_the_sdk_retries_a_rate_limit_after_retry_after(server: Server) -> None:
    """The queue is full at the first try; once the stand-in worker drains it, the SDK's own retry
    (after the answer's `retry-after-ms`) gets the job in and its answer back."""
    server.queue.submit(JobSpec("full", {"filler": True}))  # full (a second filler is let in directly)
    before = rejected(server.base, "full", "queue_full")
    answer = {"choices": [{"index": 0, "text": "after the wait", "finish_reason": "stop"}], "usage": {}}

    def drain_then_answer() -> None:
        wait_for(lambda: rejected(server.base, "full", "queue_full") > before, 30, "a refusal")
        deadline = threading.Event()
        for _ in range(3000):
            for job in server.queue.lease("full", "w8", max_jobs=4):
                chat = "messages" in job.input
                server.queue.complete(job.id, "w8", answer if chat else {})
                if chat:
                    return
            deadline.wait(0.01)

    helper = threading.Thread(target=drain_then_answer, daemon=True)
    helper.start()
    reply = server.client(retries=3).chat.completions.create(
        model="full", messages=[{"role": "user", "content": "hi"}]
    )
    helper.join(30)
    assert reply.choices[0].message.content == "after the wait"
    assert rejected(server.base, "full", "queue_full") > before, "the first try was refused"


# -- images -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_images_are_generated_as_b64_json(server: Server, image_worker: None) -> None:
    from PIL import Image

    answer = server.client().images.generate(
        model="img", prompt="a red bird", n=2, size="64x64", response_format="b64_json"
    )
    assert len(answer.data) == 2 and answer.created > 0
    images = [Image.open(io.BytesIO(base64.b64decode(item.b64_json or ""))) for item in answer.data]
    assert all(image.format == "PNG" and image.size == (64, 64) for image in images)
    texts = [image.info["parameters"] for image in images]  # type: ignore[attr-defined]
    assert texts[0].startswith("a red bird\n") and "Size: 64x64" in texts[0]
    seeds = [int(text.split("Seed: ")[1].split(",")[0]) for text in texts]
    assert seeds[1] == (seeds[0] + 1) % 2**32
    (job,) = [j for j in server.queue.jobs(service="img", limit=20) if j.input.get("prompt") == "a red bird"]
    assert job.input == {"prompt": "a red bird", "images": 2, "width": 64, "height": 64}


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"size": "big"}, "size"),
        ({"size": "100x64"}, "size"),
        ({"response_format": "url"}, "response_format"),
        ({"n": 40}, "n"),
    ],
)
def test_image_requests_that_cannot_be_honoured(server: Server, params: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused_request:
        server.client().images.generate(model="img", prompt="x", **params)
    assert refused_request.value.param == param


def test_the_filter_refuses_as_a_content_policy_violation(server: Server) -> None:
    before = refused(server.base, "img", "openai"), refused(server.base, "llm", "openai")
    with pytest.raises(openai.BadRequestError) as image:
        server.client().images.generate(model="img", prompt="CSAM please", response_format="b64_json")
    assert image.value.code == "content_policy_violation" and image.value.status_code == 400
    assert "blocked term" in image.value.message and image.value.param == "prompt"
    with pytest.raises(openai.BadRequestError) as chat:
        server.client().chat.completions.create(
            model="llm", messages=[{"role": "user", "content": [{"type": "text", "text": "child porn"}]}]
        )
    assert chat.value.code == "content_policy_violation" and chat.value.param == "messages.0.content"
    assert (refused(server.base, "img", "openai"), refused(server.base, "llm", "openai")) == (
        before[0] + 1,
        before[1] + 1,
    )
    assert not [j for j in server.queue.jobs(service="img", limit=50) if "CSAM" in j.input.get("prompt", "")]
