"""The LLM simulator: continuous batching, KV budget, TTFT, conservation, the trace reader, policies."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from swell.brain.policies import POLICIES, make_policy
from swell.core.errors import ValidationError
from swell.sim.llm import LlmEngine, LlmReport, LlmSimulator, llm_pool, simulate_llm
from swell.sim.llm_trace import LlmTrace, read_llm_trace, synthetic_llm
from swell.sim.report import Report

TRACE = Path(__file__).resolve().parents[3] / "shared" / "data" / "azure_llm_code_2023-11-16.csv"
FREE = llm_pool(guardrails=False, gpu_start_seconds=0, init_seconds=0, model_gb=0, start_jitter=0)


def one_replica(trace: LlmTrace, engine: LlmEngine) -> LlmSimulator:
    """A warm replica that stays: the engine alone decides what happens."""
    return LlmSimulator(trace, make_policy("static", replicas=1), engine, FREE, initial_replicas=1)


def burst(n: int, prompt: int = 100, output: int = 200) -> LlmTrace:
    return synthetic_llm([0.0] * n, [prompt] * n, [output] * n)


def decode_rate(n: int, engine: LlmEngine) -> float:
    """Generated tokens per second of virtual time for `n` identical requests arriving at once."""
    report = one_replica(burst(n), engine).run()
    return report.output_tokens / report.sim_seconds


def test_throughput_grows_with_concurrency_up_to_the_kv_limit() -> None:
    roomy = LlmEngine(kv_tokens=1_000_000, slots=8)
    rates = [decode_rate(n, roomy) for n in (1, 2, 4, 8, 16)]
    assert all(b > a * 1.3 for a, b in itertools.pairwise(rates))  # batching pays
    assert rates[-1] < 16 * rates[0]  # sub-linearly: each sequence adds to the step
    tight = replace(roomy, kv_tokens=8 * 300)  # room for 8 sequences of 100 + 200 tokens
    assert decode_rate(16, tight) == pytest.approx(decode_rate(8, tight), rel=0.02)
    assert decode_rate(16, tight) < 0.7 * decode_rate(16, roomy)
    pure = [roomy.decode_tokens_per_s(b, 2000) for b in (1, 8, 64)]
    assert pure[0] < pure[1] < pure[2] < 64 * pure[0]


def test_max_batch_caps_the_batch() -> None:
    engine = LlmEngine(kv_tokens=1_000_000, max_batch=4, step_tokens=512, slots=4)
    report = one_replica(burst(10), engine).run()
    assert report.peak_batch == 4


def test_a_replica_never_exceeds_its_kv_budget() -> None:
    rng = np.random.default_rng(3)
    n = 300
    trace = synthetic_llm(np.sort(rng.uniform(0, 60, n)), rng.integers(10, 3000, n), rng.integers(1, 400, n))
    engine = LlmEngine(kv_tokens=12_000, slots=6)
    sim = one_replica(trace, engine)
    report = sim.run()
    assert 0.8 * engine.kv_tokens < report.peak_kv_tokens <= engine.kv_tokens
    assert report.kv_tokens == engine.kv_tokens


def test_a_request_larger_than_the_kv_budget_is_refused_with_the_field() -> None:
    with pytest.raises(ValidationError) as err:
        one_replica(synthetic_llm([0.0], [900], [200]), LlmEngine(kv_tokens=1000))
    assert err.value.field == "kv_tokens" and "1100 > kv_tokens 1000" in err.value.message


def test_ttft_is_the_prefill_on_an_idle_replica_and_adds_the_queue_behind_others() -> None:
    engine = LlmEngine(kv_tokens=1_000_000, step_tokens=1000, max_batch=8, slots=1)
    alone = one_replica(synthetic_llm([0.0], [3000], [5]), engine).run()
    steps = 3 * engine.step_seconds(0, 0, 1000)  # three chunks of 1,000 prompt tokens
    assert alone.p50_wait_s == pytest.approx(steps)
    assert alone.p50_e2e_s > alone.p50_wait_s
    # a second request right behind shares the chunks: its first token comes after the first's
    two = one_replica(synthetic_llm([0.0, 0.0], [3000, 3000], [5, 5]), engine)
    report = two.run()
    ttft = two.first - two.trace.arrival
    assert ttft[0] == pytest.approx(steps, rel=0.05)
    assert ttft[1] > ttft[0] + 2 * 1000 / engine.prefill_tokens_per_s
    assert report.max_wait_s == pytest.approx(ttft[1])
    # a full replica makes the third wait in the queue, and its TTFT includes that wait
    full = replace(engine, max_batch=2)
    three = one_replica(synthetic_llm([0.0, 0.0, 0.0], [3000] * 3, [50] * 3), full)
    three.run()
    queue = three.admitted - three.trace.arrival
    assert queue[2] > 0 and queue[0] == queue[1] == 0
    assert (three.first - three.trace.arrival)[2] > queue[2] + 3000 / engine.prefill_tokens_per_s


def busy_trace(seed: int = 1, n: int = 400) -> LlmTrace:
    rng = np.random.default_rng(seed)
    starts = rng.uniform(0, 3000, size=6)
    arrival = np.sort(np.concatenate([s + rng.exponential(0.5, n // 6).cumsum() for s in starts]))
    k = len(arrival)
    return synthetic_llm(arrival, rng.integers(50, 4000, k), rng.integers(1, 120, k))


@pytest.mark.parametrize("name", list(POLICIES))
def test_every_request_finishes_once_under_every_policy(name: str) -> None:
    trace = busy_trace()
    sim = LlmSimulator(trace, make_policy(name), pool=llm_pool(gpu_start_seconds=30, model_gb=13))
    report = sim.run()
    assert isinstance(report, Report) and isinstance(report, LlmReport)
    assert (sim.finishes == 1).all()
    assert not np.isnan(sim.first).any() and (sim.done >= sim.first).all()
    assert (sim.first >= sim.admitted).all() and (sim.admitted >= trace.arrival).all()
    assert report.gpu_hours == pytest.approx(
        report.work_gpu_hours + report.starting_gpu_hours + report.loading_gpu_hours + report.idle_gpu_hours
    )
    assert report.work_gpu_hours > 0 and 0 <= report.slo_attainment <= report.ttft_attainment <= 1
    assert report.p99_e2e_s >= report.p99_wait_s >= report.p50_wait_s > 0
    assert report.output_tokens == int(trace.output.sum()) and report.model_loads["remote"] >= 1
    assert report.to_json()["policy"] == name


def test_deterministic_and_the_seed_moves_start_times() -> None:
    trace = busy_trace(seed=2)
    runs = [simulate_llm(trace, make_policy("swell"), pool=llm_pool(seed=s)).to_json() for s in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0]["starting_gpu_hours"] != runs[2]["starting_gpu_hours"]


def test_a_policy_sees_token_work_in_slot_seconds() -> None:
    engine = LlmEngine(slots=10)
    cost = engine.cost(np.array([6000]), np.array([1]), 10)
    # a 6,000-token prompt holds the whole GPU for a second: 10 slot-seconds, one replica-second
    assert cost[0] == pytest.approx(10 * (1.0 + engine.decode_step_base / 10 + 1.5e-4 + 5.4e-7 * 6000.5))


def test_the_real_trace_reads_and_replays() -> None:
    if not TRACE.exists():
        pytest.skip("../shared/data is not beside the checkout")
    trace = read_llm_trace(TRACE)
    assert len(trace) == 8819 and trace.arrival[0] == 0.0 and (np.diff(trace.arrival) >= 0).all()
    assert trace.prompt[0] == 4808 and trace.output[0] == 10  # the first row, 18:17:03.9799600
    assert 3400 < trace.span < 3600
    assert LlmEngine().nominal_slots(trace) == 24  # 50,000 KV tokens / 2,076 per request
    head = trace.head(800)
    report = simulate_llm(head, make_policy("swell"), initial_replicas=2)
    assert report.jobs == 800 and report.slots == LlmEngine().nominal_slots(head)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return path


def test_reader_keeps_fractions_zones_and_sorts(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "TIMESTAMP,ContextTokens,GeneratedTokens,extra\n"
        "2024-05-10 00:00:01.5000001+00:00,10,0,x\n"
        "2024-05-10 00:00:00.0000001Z,20,3,y\n",
    )
    trace = read_llm_trace(path)
    assert list(trace.prompt) == [20, 10] and list(trace.output) == [3, 1]  # 0 generated: one token
    assert trace.arrival[1] == pytest.approx(1.5)
    assert trace.name == "trace"


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("TIMESTAMP,ContextTokens\n2023-11-16 18:17:03,1\n", "GeneratedTokens", "lacks column Generated"),
        ("", "TIMESTAMP", "found: none"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n", "trace", "no requests"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,1\n", "TIMESTAMP", "trace.csv:2"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,-4,1\n", "ContextTokens", "-4"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,4,1.5\n", "GeneratedTokens", "1.5"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,4,\n", "GeneratedTokens", "line"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-13-16 18:17:03,4,1\n", "TIMESTAMP", "valid"),
    ],
)
def test_reader_errors_name_the_column(tmp_path: Path, text: str, field: str, words: str) -> None:
    path = write(tmp_path, text.replace("line", ""))
    with pytest.raises(ValidationError) as err:
        read_llm_trace(path)
    assert err.value.field == field
    assert words.replace("line", "") in err.value.message


def test_reader_missing_file() -> None:
    with pytest.raises(ValidationError) as err:
        read_llm_trace("/nonexistent/trace.csv")
    assert err.value.field == "trace"


def test_engine_and_simulator_refuse_bad_settings() -> None:
    with pytest.raises(ValidationError) as err:
        LlmEngine(step_tokens=100, max_batch=256)
    assert err.value.field == "step_tokens"
    with pytest.raises(ValidationError) as err:
        LlmEngine(kv_tokens=0)
    assert err.value.field == "kv_tokens"
    with pytest.raises(ValidationError) as err:
        LlmSimulator(burst(1), make_policy("static"), initial_replicas=-1)
    assert err.value.field == "initial_replicas"
