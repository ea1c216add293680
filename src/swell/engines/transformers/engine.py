"""The `transformers` engine: a causal LM, several jobs per `generate`, every sequence on its own.

A call's jobs become rows (a job asking for `n` completions, `n` rows), packed into `generate` calls
of at most `max_batch_rows` rows, prompts left-padded with an attention mask. Each row keeps its own
sampling parameters and seed (swell.engines.transformers.sampling), its own incremental decoder and
stop strings, its own end (EOS, `max_tokens`, a stop string, a cancel), driven once per step by
swell.engines.transformers.stopping; a finished job's result is reported at once, while the others
still run.

Weights are read from safetensors files only (never pickle), from a local folder or a dataset
fetched through the node cache; nothing is downloaded (`local_files_only`), and no model code from
the folder is run (`trust_remote_code` stays off). One `generate` at a time per engine.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swell.core.errors import ConfigError, MissingExtra, SwellError, ValidationError
from swell.engines.base import LoadTimings, RunContext
from swell.engines.spec import EngineEnv
from swell.engines.transformers.spec import SPEC, TransformersInput, TransformersOptions, check
from swell.engines.transformers.streaming import Row, decoder_of, rows_for

WARMUP_PROMPT = "Hello"


@dataclass
class Job:
    """One job of a call, tokenized: where its result goes and the rows that make it."""

    position: int  # its index in the call's inputs
    job_id: str
    request: TransformersInput
    prompt: list[int]
    seed: int
    rows: list[Row]
    max_tokens: int  # the job's, or the service's default cut to what the context leaves

    def result(self, model: str | None) -> dict[str, Any]:
        """The job's result: its choices in order, token counts, the model and the seed used."""
        completion = sum(row.tokens for row in self.rows)
        usage = {
            "prompt_tokens": len(self.prompt),
            "completion_tokens": completion,
            "total_tokens": len(self.prompt) + completion,
        }
        return {
            "choices": [row.choice() for row in self.rows],
            "usage": usage,
            "model": model,
            "seed": self.seed,
        }


class TransformersEngine:
    """A causal LM served by one worker (see the module docstring)."""

    batches = True

    def __init__(self, options: TransformersOptions, env: EngineEnv) -> None:
        if options.dataset is not None:
            env.dataset(options.dataset)  # an unknown name fails now, naming options.dataset
        self.options = options
        self.env = env
        self.model: str | None = options.dataset or Path(options.path or "model").name
        self.device: str | None = options.device or env.device
        self._lm: Any = None
        self._tokenizer: Any = None
        self._eos: frozenset[int] = frozenset()
        self._pad = 0
        self._context: int | None = None  # the most positions the model takes (prompt + completion)
        self._strings: list[str | None] | None = None  # each token's text, for JSON mode
        self._decode: Callable[[Sequence[int]], str] = _unloaded
        self._lock = threading.Lock()

    # -- load ------------------------------------------------------------------------------------

    def load(self) -> LoadTimings:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import torch
            import transformers
        except ImportError as exc:
            raise MissingExtra("the transformers engine", "transformers") from exc
        transformers.utils.logging.disable_progress_bar()
        directory, fetch = self._fetch()
        self._check_weights(directory)
        started = time.perf_counter()
        self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
        self._decode = decoder_of(self._tokenizer)
        self._lm = self._load_model(transformers, directory)
        self._special_tokens()
        loaded = time.perf_counter()
        self._warm_up()
        return LoadTimings(fetch=fetch, load=loaded - started, warmup=time.perf_counter() - loaded)

    def _fetch(self) -> tuple[Path, float]:
        """The model's local folder (through the node cache for a dataset) and the seconds it took."""
        from swell.data.datasets import PhaseTimings, dataset_path

        if self.options.dataset is None:
            return Path(self.options.path or "."), 0.0
        timings = PhaseTimings()
        directory = dataset_path(
            self.options.dataset, dict(self.env.datasets), self.env.data_dir, timings=timings
        )
        return directory, timings.fetch

    def _check_weights(self, directory: Path) -> None:
        """A folder without safetensors weights is refused before anything is read (no pickle)."""
        key = "options.dataset" if self.options.dataset else "options.path"
        if not (directory / "config.json").is_file():
            raise ConfigError(f"{directory} is not a transformers model folder (no config.json)", key=key)
        if not any(directory.glob("*.safetensors")):
            message = f"{directory} holds no .safetensors weights; only safetensors weights are loaded"
            raise ConfigError(message, key=key)

    def _load_model(self, transformers: Any, directory: Path) -> Any:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            directory, dtype=self._dtype(), local_files_only=True, use_safetensors=True
        )
        return model.to(self.device).eval()

    def _dtype(self) -> Any:
        import torch

        wanted = self.options.dtype
        if wanted == "auto":
            if not str(self.device).startswith("cuda"):
                return torch.float32
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return getattr(torch, wanted)

    def _special_tokens(self) -> None:
        """The ids that end a sequence (the model's generation config and the tokenizer's), the pad
        id (the tokenizer's, else the first end id), and the context length."""
        config = self._lm.generation_config
        ends = config.eos_token_id
        ids = set(ends if isinstance(ends, list) else [ends] if ends is not None else [])
        if self._tokenizer.eos_token_id is not None:
            ids.add(int(self._tokenizer.eos_token_id))
        self._eos = frozenset(int(i) for i in ids)
        pad = self._tokenizer.pad_token_id
        self._pad = int(pad) if pad is not None else min(self._eos, default=0)
        limits = [getattr(self._lm.config, "max_position_embeddings", None), self._tokenizer.model_max_length]
        known = [int(n) for n in limits if isinstance(n, int) and 0 < n < 10**7]
        self._context = min(known) if known else None

    def _warm_up(self) -> None:
        """One short greedy generation: the first call's allocations happen before the first job."""
        import torch

        ids = self._tokenizer(WARMUP_PROMPT)["input_ids"] or [self._pad]
        tensor = torch.tensor([ids], device=self.device)
        with torch.inference_mode():
            self._lm.generate(
                tensor, attention_mask=torch.ones_like(tensor), generation_config=self._generation_config(2)
            )

    # -- run -------------------------------------------------------------------------------------

    def run(self, inputs: list[dict[str, Any]], context: RunContext) -> list[dict[str, Any] | Exception]:
        """Every job of the call generated together; a job that cannot run fails alone."""
        import torch

        if self._lm is None:
            raise RuntimeError("the transformers engine is not loaded")
        results: list[dict[str, Any] | Exception] = [RuntimeError("not generated")] * len(inputs)
        jobs: list[Job] = []
        for position, (job_id, payload) in enumerate(zip(context.job_ids, inputs, strict=True)):
            try:
                jobs.append(self._job(position, job_id, payload))
            except (SwellError, ValueError) as exc:
                results[position] = exc
        with self._lock, torch.inference_mode():
            for chunk in self._chunks(jobs):
                self._generate(chunk, context, results)
        return results

    def _job(self, position: int, job_id: str, payload: dict[str, Any]) -> Job:
        """One input parsed, checked against the service and tokenized, with its rows."""
        request: TransformersInput = SPEC.parse_input(payload)
        check(request, self.options)
        prompt = self._prompt(request)
        max_tokens = self._max_tokens(request, len(prompt))
        if request.json_mode and not self._eos:
            raise ValidationError(
                "JSON mode needs a model with an end-of-sequence token", field="input.response_format"
            )
        seed = request.seed if request.seed is not None else secrets.randbits(63)
        rows = rows_for(
            job_id,
            request.n,
            max_tokens=max_tokens,
            stops=request.stops(),
            decode=self._decode,
            eos=self._eos,
        )
        return Job(position, job_id, request, prompt, seed, rows, max_tokens)

    def _max_tokens(self, request: TransformersInput, prompt: int) -> int:
        """The tokens a job may generate: its `max_tokens`, refused when the prompt leaves less room
        in the model's context; unset, the service's `default_max_tokens` cut to that room.

        The message starts with the field (`input.max_tokens: ...`): the job's error reaches the
        OpenAI door as text, which answers it as a 400 naming the parameter."""
        room = None if self._context is None else self._context - prompt
        if room is not None and room < 1:
            message = (
                f"input.prompt: the prompt's {prompt} tokens fill the model's context of {self._context}"
            )
            raise ValidationError(message, field="input.prompt")
        if request.max_tokens is None:
            default = self.options.default_max_tokens
            return default if room is None else min(default, room)
        if room is not None and request.max_tokens > room:
            message = (
                f"input.max_tokens: {request.max_tokens} tokens after the prompt's {prompt} exceed the "
                f"model's context of {self._context} tokens; at most {room} here"
            )
            raise ValidationError(message, field="input.max_tokens")
        return request.max_tokens

    def _prompt(self, request: TransformersInput) -> list[int]:
        """The prompt's token ids: the text with the tokenizer's special tokens, or the messages
        through the chat template (which writes its own special tokens)."""
        if request.messages is None:
            ids = list(self._tokenizer(request.prompt or "")["input_ids"])
        else:
            ids = self._tokenizer(self._chat(request), add_special_tokens=False)["input_ids"]
        if not ids:
            bos = self._tokenizer.bos_token_id
            if bos is None:
                raise ValidationError(
                    "the prompt is empty and the model has no start token", field="input.prompt"
                )
            ids = [int(bos)]
        return [int(i) for i in ids]

    def _chat(self, request: TransformersInput) -> str:
        if not getattr(self._tokenizer, "chat_template", None):
            raise ValidationError("this model has no chat template; give 'prompt'", field="input.messages")
        messages = [m.model_dump(exclude_none=True) for m in request.messages or []]
        try:
            text = self._tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False, return_dict=False
            )
        except Exception as exc:  # the template's own refusal (roles out of order, say)
            raise ValidationError(
                f"the chat template refused these messages: {exc}", field="input.messages"
            ) from None
        return str(text)

    def _chunks(self, jobs: Sequence[Job]) -> Iterator[list[Job]]:
        """Jobs in order, packed into calls of at most `max_batch_rows` rows (a job's rows together)."""
        chunk: list[Job] = []
        rows = 0
        for job in jobs:
            if chunk and rows + len(job.rows) > self.options.max_batch_rows:
                yield chunk
                chunk, rows = [], 0
            chunk.append(job)
            rows += len(job.rows)
        if chunk:
            yield chunk

    def _generate(
        self, jobs: list[Job], context: RunContext, results: list[dict[str, Any] | Exception]
    ) -> None:
        """One `generate` over the jobs' rows; each job's result is reported as soon as it is done."""
        from transformers import LogitsProcessorList, StoppingCriteriaList

        from swell.engines.transformers.sampling import RowSampler
        from swell.engines.transformers.stopping import BatchStopper

        by_id = {job.job_id: job for job in jobs}

        def finished(job_id: str) -> None:
            job = by_id[job_id]
            results[job.position] = job.result(self.model)
            context.report(job_id, results[job.position])

        for job in jobs:
            if context.cancelled(job.job_id):  # cancelled while it waited: ends before any work
                for row in job.rows:
                    row.end("cancelled")
                finished(job.job_id)
        jobs = [job for job in jobs if not job.rows[0].done]
        if not jobs:
            return
        rows = [row for job in jobs for row in job.rows]
        stopper = BatchStopper(rows, context, finished)
        ids, mask = self._padded([job.prompt for job in jobs for _ in job.rows])
        sampling = self._sampling(jobs)
        processors = self._json_constraint(jobs, rows)
        if any(row.temperature > 0 for row in sampling):  # all greedy: no per-step sampler call at all
            processors.append(RowSampler(sampling))
        self._lm.generate(
            ids,
            attention_mask=mask,
            generation_config=self._generation_config(max(job.max_tokens for job in jobs)),
            logits_processor=LogitsProcessorList(processors),
            stopping_criteria=StoppingCriteriaList([stopper]),
        )
        stopper.end()

    def _json_constraint(self, jobs: Sequence[Job], rows: Sequence[Row]) -> list[Any]:
        """The JSON-mode processor for the rows of JSON-mode jobs (none when there are none)."""
        from swell.engines.transformers.constrain import SAMPLED_CANDIDATES, JsonConstraint

        constrained: list[int] = []
        keep: list[int] = []
        start = 0
        for job in jobs:
            if job.request.json_mode:
                constrained += range(start, start + len(job.rows))
                sampled = job.request.temperature > 0
                kept = (job.request.top_k or SAMPLED_CANDIDATES) if sampled else 1
                keep += [kept] * len(job.rows)
            start += len(job.rows)
        if not constrained:
            return []
        return [JsonConstraint(rows, constrained, self._token_strings(), min(self._eos), keep)]

    def _token_strings(self) -> list[str | None]:
        """Each token's text, decoded once per engine the first time a job asks for JSON mode."""
        from swell.engines.transformers.constrain import token_strings

        if self._strings is None:
            size = int(self._lm.get_output_embeddings().weight.shape[0])
            self._strings = token_strings(self._tokenizer, size)
        return self._strings

    def _sampling(self, jobs: Sequence[Job]) -> list[Any]:
        from swell.engines.transformers.sampling import Sampling, row_seed

        return [
            Sampling(
                job.request.temperature, job.request.top_k, job.request.top_p, row_seed(job.seed, row.index)
            )
            for job in jobs
            for row in job.rows
        ]

    def _padded(self, prompts: Sequence[list[int]]) -> tuple[Any, Any]:
        """The prompts left-padded to the longest, and their attention mask."""
        import torch

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _generation_config(self, max_new_tokens: int) -> Any:
        """Greedy decoding of up to `max_new_tokens` (RowSampler does any sampling), with none of the
        model's own defaults (repetition penalties, minimum lengths) applied behind the job's back."""
        from transformers import GenerationConfig

        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            min_new_tokens=0,
            do_sample=False,
            num_beams=1,
            temperature=1.0,
            top_p=1.0,
            top_k=50,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            eos_token_id=sorted(self._eos) or None,
            pad_token_id=self._pad,
            use_cache=True,
        )

    def unload(self) -> None:
        self._lm = None
        self._tokenizer = None
        self._strings = None


def _unloaded(ids: Sequence[int]) -> str:
    raise RuntimeError("the transformers engine is not loaded")
