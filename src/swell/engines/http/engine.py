"""The `http` engine: jobs forwarded to a server that runs the model (see swell.engines.http.spec).

The engine owns an event loop in its own thread for the life of the load, and one `httpx.AsyncClient`
on it (keep-alive connections to the server); `run` hands a call to that loop and waits. In a1111
mode a call holds one job (A1111 runs one generation at a time); in openai mode the call's jobs are
streamed concurrently (at most `concurrency`), since such a server batches them itself. Every job
races a cancel watcher: a cancel cancels its task (closing its stream) and the job ends cancelled.

With `command`, a `ManagedServer` keeps the server running. A job sent while it restarts waits for
it (up to `ready_timeout`); a job whose server died under it fails `Unavailable`, which the worker
retries, and a job the server refused as malformed fails for good (swell.engines.http.wire).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx

from swell.core.errors import ConfigError, EngineError, SwellError, Unavailable
from swell.engines.base import JobCancelled, LoadTimings, RunContext
from swell.engines.http import a1111, openai
from swell.engines.http.process import ManagedServer
from swell.engines.http.spec import A1111Input, HttpOptions, OpenAIInput, parse_job
from swell.engines.http.wire import raise_for_status, transport_error
from swell.engines.spec import EngineEnv

T = TypeVar("T")
CANCEL_POLL = 0.1  # seconds between cancel checks of a running job
CONNECT_SECONDS = 10.0
READY_POLL = 0.5


class Loop:
    """An asyncio event loop running in its own daemon thread until `stop`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="http-engine", daemon=True)
        self._thread.start()

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the loop; its result (or exception) here."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


class HttpEngine:
    """A worker's engine that forwards each job to a server (see the module docstring)."""

    def __init__(self, options: HttpOptions, env: EngineEnv) -> None:
        self.options = options
        self.env = env
        self.batches = options.mode == "openai"
        self.model: str | None = options.model
        self.headers = auth_headers(options)
        self._loop: Loop | None = None
        self._client: httpx.AsyncClient | None = None
        self.server: ManagedServer | None = None

    def load(self) -> LoadTimings:
        """Start the server when the options say how (else wait for the configured one to answer),
        and open the connection pool; the load phase is the server's start."""
        started = time.monotonic()
        if self.options.command is not None:
            self.server = self._managed()
            self.server.start()
        else:
            wait_until_answers(self.options.readiness_url(), self.headers, self.options.ready_timeout)
        loaded = time.monotonic()
        self._loop = Loop()
        self._client = self._loop.call(self._open())
        if self.options.mode == "openai" and self.model is None:
            self.model = self._loop.call(self._default_model())
        return LoadTimings(load=loaded - started, warmup=time.monotonic() - loaded)

    def run(self, inputs: list[dict[str, Any]], context: RunContext) -> list[dict[str, Any] | Exception]:
        if self._loop is None or self._client is None:
            raise EngineError("the http engine is not loaded")
        return self._loop.call(self._run(inputs, context))

    def unload(self) -> None:
        if self._loop is not None:
            if self._client is not None:
                self._loop.call(self._client.aclose())
            self._loop.stop()
        self._loop = self._client = None
        if self.server is not None:
            self.server.stop()
            self.server = None

    def __repr__(self) -> str:
        return f"HttpEngine(mode={self.options.mode}, url={self.options.url!r}, server={self.server!r})"

    # -- on the loop ----------------------------------------------------------------------------

    async def _open(self) -> httpx.AsyncClient:
        timeout = httpx.Timeout(self.options.timeout, connect=CONNECT_SECONDS)
        limits = httpx.Limits(max_connections=self.options.concurrency + 4)
        return httpx.AsyncClient(
            base_url=self.options.url, headers=self.headers, timeout=timeout, limits=limits, trust_env=False
        )

    async def _default_model(self) -> str | None:
        assert self._client is not None
        try:
            models = await openai.served_models(self._client)
        except httpx.HTTPError as exc:
            raise transport_error(exc, self.options.url) from None
        return models[0] if models else None

    async def _run(
        self, inputs: list[dict[str, Any]], context: RunContext
    ) -> list[dict[str, Any] | Exception]:
        gate = asyncio.Semaphore(self.options.concurrency)
        jobs = [
            self._one(gate, job_id, payload, context)
            for job_id, payload in zip(context.job_ids, inputs, strict=True)
        ]
        return list(await asyncio.gather(*jobs))

    async def _one(
        self, gate: asyncio.Semaphore, job_id: str, payload: dict[str, Any], context: RunContext
    ) -> dict[str, Any] | Exception:
        """One job to its end: its result or the error in its place, reported as soon as final."""
        async with gate:
            outcome = await self._outcome(job_id, payload, context)
        context.report(job_id, outcome)
        return outcome

    async def _outcome(
        self, job_id: str, payload: dict[str, Any], context: RunContext
    ) -> dict[str, Any] | Exception:
        try:
            job = parse_job(payload, self.options.mode)
            if context.cancelled(job_id):
                return JobCancelled(f"job {job_id} was cancelled before it started")
            await self._server_ready()
            return await self._guarded(job_id, self._work(job_id, job, context), context)
        except SwellError as exc:
            return exc
        except httpx.HTTPError as exc:
            return self._lost(exc)

    def _lost(self, exc: httpx.HTTPError) -> Exception:
        """The job got no answer; with a managed server that died meanwhile, say so."""
        error = transport_error(exc, self.options.url)
        if self.server is not None and not self.server.ready:
            return Unavailable(f"the server {self.options.url} died while running the job ({error})")
        return error

    async def _server_ready(self) -> None:
        if self.server is None or self.server.ready:
            return
        if not await asyncio.to_thread(self.server.wait_ready, self.options.ready_timeout):
            raise Unavailable(f"the server {self.options.url} is not running ({self.server.state.value})")

    def _work(
        self, job_id: str, job: A1111Input | OpenAIInput, context: RunContext
    ) -> Coroutine[Any, Any, Any]:
        assert self._client is not None
        model = job.model or self.model
        if isinstance(job, A1111Input):
            return self._image(job_id, job, model, context)
        if job.kind() == "embeddings":
            return openai.embed(self._client, job, model)
        return openai.complete(self._client, job_id, job, model, context)

    async def _image(
        self, job_id: str, job: A1111Input, model: str | None, context: RunContext
    ) -> dict[str, Any] | Exception:
        assert self._client is not None
        result = await a1111.generate(self._client, job_id, job, model, context, self.options)
        if model is not None and not isinstance(result, Exception):
            self.model = model  # the server keeps this checkpoint loaded: lease its jobs first
        return result

    async def _guarded(self, job_id: str, work: Awaitable[Any], context: RunContext) -> Any:
        """`work` within `timeout`, cancelled (JobCancelled) when the job is. A1111 work watches its
        own cancel (it must interrupt the server), so this watcher only backs it up."""
        task = asyncio.ensure_future(work)
        deadline = asyncio.get_running_loop().time() + self.options.timeout
        while not task.done():
            await asyncio.wait({task}, timeout=CANCEL_POLL)
            if task.done():
                break
            if context.cancelled(job_id) and self.options.mode == "openai":
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                return JobCancelled(f"job {job_id} was cancelled")
            if asyncio.get_running_loop().time() > deadline:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                return EngineError(f"the server did not finish the job within {self.options.timeout:g} s")
        return task.result()

    def _managed(self) -> ManagedServer:
        assert self.options.command is not None
        return ManagedServer(
            self.options.command,
            self.options.readiness_url(),
            log_path=Path(self.env.data_dir) / "logs" / f"http-server-{os.getpid()}.log",
            ready_timeout=self.options.ready_timeout,
            restart=self.options.restart,
            backoff=self.options.restart_backoff,
            backoff_max=self.options.restart_backoff_max,
            stop_timeout=self.options.stop_timeout,
            cwd=self.options.cwd,
            headers=self.headers,
        )


def auth_headers(options: HttpOptions) -> dict[str, str]:
    """`Authorization: Bearer KEY` from the variable `api_key_env` names; a ConfigError when unset."""
    if options.api_key_env is None:
        return {}
    key = os.environ.get(options.api_key_env)
    if not key:
        raise ConfigError(f"the variable {options.api_key_env} is not set", key="options.api_key_env")
    return {"Authorization": f"Bearer {key}"}


def wait_until_answers(url: str, headers: dict[str, str], timeout: float) -> None:
    """Return once `url` answers 2xx; Unavailable after `timeout` seconds of trying."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    with httpx.Client(headers=headers, timeout=httpx.Timeout(5.0), trust_env=False) as client:
        while True:
            try:
                response = client.get(url)
                raise_for_status(response)
                return
            except (httpx.HTTPError, SwellError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise Unavailable(f"the server at {url} did not answer within {timeout:g} s ({last})")
            time.sleep(min(READY_POLL, max(0.0, deadline - time.monotonic())))
