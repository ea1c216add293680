"""The transformers engine in-process, on a tiny random LM (its text is noise; only its mechanics
are checked: batching, streaming, stops, seeds, cancels)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from swell.core.errors import ConfigError, ValidationError
from swell.engines.base import LoadTimings, MemorySignals
from tests.engines.transformers.conftest import make_engine, run

PROMPTS: list[dict[str, Any]] = [
    {"prompt": "hello world"},
    {"prompt": "the cat is on the"},
    {"prompt": "a"},
    {"messages": [{"role": "system", "content": "you are tiny"}, {"role": "user", "content": "hello"}]},
    {"prompt": "you are the model of the world and it was for the dog"},
]


def greedy(item: dict[str, Any], max_tokens: int = 12, **more: Any) -> dict[str, Any]:
    return {**item, "max_tokens": max_tokens, "temperature": 0.0, **more}


def texts(results: list[Any]) -> list[list[str]]:
    return [[choice["text"] for choice in result["choices"]] for result in results]


def test_batched_and_single_greedy_text_is_identical(engine: Any) -> None:
    jobs = [greedy(item) for item in PROMPTS]
    alone = [run(engine, [job])[0][0] for job in jobs]
    together, _ = run(engine, jobs)
    assert texts(together) == texts(alone)
    assert [r["usage"] for r in together] == [r["usage"] for r in alone]
    for result in together:
        assert result["choices"][0]["finish_reason"] == "length"
        assert result["usage"]["completion_tokens"] == 12
        usage = result["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_deltas_join_to_each_jobs_text_and_progress_reaches_one(engine: Any) -> None:
    results, signals = run(engine, [greedy(item, 20) for item in PROMPTS])
    for index, result in enumerate(results):
        assert signals.text(f"j{index}") == result["choices"][0]["text"]
        fractions = signals.fractions(f"j{index}")
        assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) > 2
    pieces = [v for job, kind, v in signals.events if job == "j0" and kind == "delta"]
    assert len(pieces) > 1  # streamed while it ran, not once at the end


def test_the_chat_template_renders_messages(engine: Any, tokenizer: Any) -> None:
    messages = PROMPTS[3]["messages"]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered.endswith("<|im_start|>assistant\n")
    (chat, as_text), _ = run(engine, [greedy({"messages": messages}), greedy({"prompt": rendered})])
    assert chat["choices"] == as_text["choices"]
    assert chat["usage"]["prompt_tokens"] == len(tokenizer(rendered, add_special_tokens=False)["input_ids"])


def test_stop_strings_cut_the_text_and_end_the_sequence(engine: Any) -> None:
    (free,), _ = run(engine, [greedy(PROMPTS[1], 30)])
    text = free["choices"][0]["text"]
    checked = 0
    for start in range(2, 20, 3):
        stop = text[start : start + 3]
        expected = text[: text.find(stop)]
        (cut,), signals = run(engine, [greedy(PROMPTS[1], 30, stop=[stop, "never-generated"])])
        choice = cut["choices"][0]
        assert (choice["text"], choice["finish_reason"]) == (expected, "stop")
        assert signals.text("j0") == expected  # nothing of the stop string was streamed
        assert cut["usage"]["completion_tokens"] < 30
        checked += 1
    assert checked == 6


def test_n_completions_are_sampled_apart_and_reproducible(engine: Any) -> None:
    job = {"prompt": "hello", "max_tokens": 16, "n": 3, "seed": 7, "temperature": 1.0}
    (first,), _ = run(engine, [job])
    (again,), _ = run(engine, [job])
    batched, _ = run(engine, [greedy(PROMPTS[0]), job, {**job, "seed": 8}])
    assert first == again == batched[1]
    assert first["seed"] == 7 and [c["index"] for c in first["choices"]] == [0, 1, 2]
    assert len(set(texts([first])[0])) == 3
    assert texts([batched[2]]) != texts([first])  # another seed, other text


def test_an_unseeded_job_reports_the_seed_that_reproduces_it(engine: Any) -> None:
    job = {"prompt": "the dog", "max_tokens": 16}
    (drawn,), _ = run(engine, [job])
    (replayed,), _ = run(engine, [{**job, "seed": drawn["seed"]}])
    assert replayed["choices"] == drawn["choices"]


def test_top_k_one_and_a_tiny_top_p_are_greedy(engine: Any) -> None:
    (greedy_result,), _ = run(engine, [greedy(PROMPTS[4], 16)])
    sampled = {"prompt": PROMPTS[4]["prompt"], "max_tokens": 16, "temperature": 1.5, "seed": 3}
    results, _ = run(engine, [{**sampled, "top_k": 1}, {**sampled, "top_p": 1e-6}, sampled])
    assert texts(results[:2]) == [texts([greedy_result])[0]] * 2
    assert texts(results[2:]) != [texts([greedy_result])[0]]


class CancelAfter(MemorySignals):
    """Cancels `job` once it has streamed `pieces` pieces of text (as a client's DELETE would)."""

    def __init__(self, job: str, pieces: int) -> None:
        super().__init__()
        self.job, self.pieces = job, pieces

    def choice_delta(self, job_id: str, index: int, text: str) -> None:
        super().choice_delta(job_id, index, text)
        if (
            job_id == self.job
            and sum(1 for j, kind, _ in self.events if j == job_id and kind == "delta") >= self.pieces
        ):
            self.cancel(job_id)


def test_a_cancel_stops_that_sequence_and_the_others_go_on(engine: Any) -> None:
    jobs = [greedy(PROMPTS[0], 40), greedy(PROMPTS[1], 40, n=2), greedy(PROMPTS[2], 40)]
    (alone,), _ = run(engine, [jobs[1]])
    results, signals = run(engine, jobs, CancelAfter("j1", 2))
    assert [c["finish_reason"] for c in results[1]["choices"]] == ["cancelled", "cancelled"]
    assert 0 < results[1]["usage"]["completion_tokens"] < 2 * 40
    assert signals.text("j1") == results[1]["choices"][0]["text"]
    assert alone["choices"][0]["text"].startswith(results[1]["choices"][0]["text"])
    for other in (results[0], results[2]):
        assert other["choices"][0]["finish_reason"] == "length"
        assert other["usage"]["completion_tokens"] == 40


def test_a_job_cancelled_before_its_call_does_no_work(engine: Any) -> None:
    signals = MemorySignals()
    signals.cancel("j0")
    (cancelled, other), _ = run(engine, [greedy(PROMPTS[0]), greedy(PROMPTS[1])], signals)
    assert cancelled["choices"] == [{"index": 0, "text": "", "finish_reason": "cancelled"}]
    assert cancelled["usage"]["completion_tokens"] == 0
    assert other["usage"]["completion_tokens"] == 12


def test_more_rows_than_one_call_takes_are_split_into_calls(engine: Any) -> None:
    job = {"prompt": "hello", "max_tokens": 8, "n": 5, "seed": 1}
    results, _ = run(engine, [job, {**job, "seed": 2}, {**job, "seed": 1}])  # 15 rows, 8 per call
    (alone,), _ = run(engine, [job])
    assert results[0] == results[2] == alone
    assert all(len(r["choices"]) == 5 for r in results)


def test_a_bad_job_fails_alone_naming_its_field(engine: Any) -> None:
    bad: list[dict[str, Any]] = [
        {"prompt": "x", "messages": [{"role": "user", "content": "y"}]},
        {"prompt": "x y", "max_tokens": 1023},  # over the model's 1,024 positions with the prompt
        {"prompt": "x", "n": 9},  # over max_batch_rows
        {"prompt": "x", "temperature": 3},
        {"prompt": "x", "stop": [""]},
    ]
    results, _ = run(engine, [*bad, greedy(PROMPTS[0])])
    fields = [getattr(r, "field", None) for r in results[:-1]]
    assert all(isinstance(r, ValidationError) for r in results[:-1])
    assert fields == ["input", "input.max_tokens", "input.n", "input.temperature", "input.stop[0]"]
    assert results[-1]["usage"]["completion_tokens"] == 12


def test_messages_for_a_model_without_a_chat_template_are_refused(tiny_llm: Path, tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    shutil.copytree(tiny_llm, folder)
    (folder / "chat_template.jinja").unlink()
    plain = make_engine(folder, tmp_path)
    plain.load()
    (refused, prompted), _ = run(
        plain, [{"messages": [{"role": "user", "content": "hi"}]}, greedy(PROMPTS[0])]
    )
    assert isinstance(refused, ValidationError) and refused.field == "input.messages"
    assert prompted["usage"]["completion_tokens"] == 12


def test_pickled_or_missing_weights_are_refused_before_loading(tiny_llm: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_llm, folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="safetensors") as refused:
        make_engine(folder, tmp_path).load()
    assert refused.value.key == "options.path"
    with pytest.raises(ConfigError, match=r"config\.json"):
        make_engine(tmp_path / "missing", tmp_path).load()


def test_load_reports_its_phases(tiny_llm: Path, tmp_path: Path) -> None:
    timings = make_engine(tiny_llm, tmp_path).load()
    assert timings.load > 0 and timings.warmup > 0 and timings.fetch == 0


def test_a_dataset_is_fetched_through_the_node_cache(tiny_llm: Path, tmp_path: Path) -> None:
    from swell.data import DatasetConfig
    from swell.engines.registry import create_engine
    from tests.data.servers import range_server

    files = sorted(p.name for p in tiny_llm.iterdir())
    with range_server(tiny_llm) as (url, counter):
        datasets = {"llm": DatasetConfig(source=url, include=files)}
        remote = create_engine(
            "swell.engines.transformers.spec:SPEC",
            {"dataset": "llm", "device": "cpu"},
            data_dir=tmp_path / "data",
            datasets=datasets,
        )
        timings = remote.load()
    assert counter.bytes >= (tiny_llm / "model.safetensors").stat().st_size
    assert LoadTimings.of(timings).fetch > 0
    assert remote.model == "llm"
    local = make_engine(tiny_llm, tmp_path)
    local.load()
    job = greedy(PROMPTS[3])
    assert run(remote, [job])[0][0]["choices"] == run(local, [job])[0][0]["choices"]


def test_every_completion_of_a_job_streams_its_own_text(engine: Any) -> None:
    job = {"prompt": "hello", "max_tokens": 20, "n": 3, "seed": 5, "temperature": 1.0}
    (result, other), signals = run(engine, [job, greedy(PROMPTS[1])])
    for choice in result["choices"]:
        index = choice["index"]
        assert signals.text("j0", index) == choice["text"]
        assert (
            sum(1 for j, i, _ in signals.choices if (j, i) == ("j0", index)) > 1
        )  # streamed, not at the end
    assert signals.text("j1") == other["choices"][0]["text"]
    assert {i for j, i, _ in signals.choices if j == "j1"} == {0}


def test_signals_without_an_index_stream_the_first_completion_only(engine: Any) -> None:
    class FirstOnly:
        def __init__(self) -> None:
            self.pieces: list[str] = []

        def progress(self, job_id: str, fraction: float, preview: Any, message: Any) -> None:
            pass

        def delta(self, job_id: str, text: str) -> None:
            self.pieces.append(text)

        def cancelled(self, job_id: str) -> bool:
            return False

    from swell.engines.base import RunContext

    plain = FirstOnly()
    job = {"prompt": "hello", "max_tokens": 12, "n": 2, "seed": 5}
    [result] = engine.run([job], RunContext(["j0"], Path("."), signals=plain))
    assert "".join(plain.pieces) == result["choices"][0]["text"]


def test_an_unset_max_tokens_is_cut_to_what_the_context_leaves(tmp_path: Path) -> None:
    from swell.models.tiny_llm import make_tiny_llm

    short = make_engine(make_tiny_llm(tmp_path / "short", context=24), tmp_path, default_max_tokens=64)
    short.load()
    prompt = {"prompt": "hello world the cat is on the dog", "temperature": 0.0}
    (cut, fits, over, full), _ = run(
        short, [prompt, {**prompt, "max_tokens": 5}, {**prompt, "max_tokens": 20}, {"prompt": "a " * 30}]
    )
    prompt_tokens = cut["usage"]["prompt_tokens"]
    assert cut["usage"]["completion_tokens"] == 24 - prompt_tokens
    assert cut["choices"][0]["finish_reason"] == "length"
    assert fits["usage"]["completion_tokens"] == 5
    assert isinstance(over, ValidationError) and over.field == "input.max_tokens"
    assert str(over).startswith("input.max_tokens: ") and f"at most {24 - prompt_tokens}" in str(over)
    assert isinstance(full, ValidationError) and full.field == "input.prompt"


def test_an_unset_max_tokens_is_the_services_default(tiny_llm: Path, tmp_path: Path) -> None:
    from swell.engines.transformers.spec import SPEC

    (result,), _ = run(
        make_loaded(tiny_llm, tmp_path, default_max_tokens=7), [{"prompt": "x", "temperature": 0}]
    )
    assert result["usage"]["completion_tokens"] == 7
    with pytest.raises(ConfigError, match="default_max_tokens"):
        SPEC.parse_options({"path": "m", "max_tokens": 8, "default_max_tokens": 9})


def make_loaded(directory: Path, data: Path, **options: Any) -> Any:
    built = make_engine(directory, data, **options)
    built.load()
    return built


JSON_MODE = {"response_format": {"type": "json_object"}}


def test_json_mode_text_is_one_json_object_for_every_seed(engine: Any) -> None:
    jobs = [
        {"prompt": "hello", "max_tokens": 48, "seed": seed, "temperature": 1.0, **JSON_MODE}
        for seed in range(6)
    ]
    jobs += [greedy({"prompt": "the cat"}, 48, **JSON_MODE), greedy(PROMPTS[3], 48, **JSON_MODE)]
    jobs.append({"prompt": "hello", "max_tokens": 24, "n": 2, "seed": 3, "top_k": 5, **JSON_MODE})
    results, signals = run(engine, jobs)
    objects = 0
    for index, result in enumerate(results):
        for choice in result["choices"]:
            assert choice["finish_reason"] == "stop"  # ended by the completed object, within max_tokens
            assert isinstance(json.loads(choice["text"]), dict)
            assert signals.text(f"j{index}", choice["index"]) == choice["text"]
            objects += 1
    assert objects == 10
    assert len({r["choices"][0]["text"] for r in results[:6]}) > 1  # sampled: seeds still matter


def test_json_mode_rows_leave_the_others_of_their_call_alone(engine: Any) -> None:
    plain = greedy(PROMPTS[4], 16)
    (alone,), _ = run(engine, [plain])
    (with_json, _json), _ = run(engine, [plain, greedy(PROMPTS[0], 16, **JSON_MODE)])
    assert with_json["choices"] == alone["choices"]
    (again,), _ = run(engine, [greedy(PROMPTS[0], 16, **JSON_MODE)])
    assert again["choices"] == _json["choices"]


def test_json_mode_with_a_tiny_budget_still_closes_the_object(engine: Any) -> None:
    (result,), _ = run(engine, [{"prompt": "a", "max_tokens": 3, "seed": 1, **JSON_MODE}])
    assert result["choices"][0]["text"].strip() == "{}"
