"""Request filtering: every door's submits are judged before a job is queued.

    gateway:
      filter:
        blocked_terms: [...]          # default: the built-in list (swell/gateway/data/blocked_terms.txt);
                                      # [] turns the list off
        blocked_terms_file: terms.txt # more terms, one a line (# comments)
        hook: mypkg.moderation:judge  # judge(service, input) -> None, or the reason to refuse

`Submissions.submit` calls `RequestFilter.check` after the input is validated and before admission,
so a refused request never reaches the queue, whichever door it came through; it raises `Refused`
(403), which each door answers in its own shape (OpenAI: 400 `content_policy_violation`, A1111: its
`{"error", "detail", ...}`) and `/metrics` counts as `swell_requests_refused_total{service,door}`.

What is checked is only the text something is generated from: `prompt` (a string or a list of them),
the `content` of each chat message (text parts included) and `texts` (embeddings). A negative prompt
is not: it names what the image must *not* show, and safety-minded users put exactly the words a
block list holds there.

Terms match as whole words (a multi-word term as that sequence of words), case-insensitively, after
the same normalisation of term and text: NFKC (full-width and ligature forms fold to plain ones),
accents dropped, and every run of punctuation, underscores or white space read as one space; so
`CHILD-PORN`, `ｃｈｉｌｄ_porn` and `chíld porn` are caught, while a term inside a longer word is
not (`scsam` is not `csam`). A list is a floor, not a moderation system: the hook is where a real
classifier plugs in. It is loaded once when the gateway starts (a bad `module:function` is a
ConfigError naming `gateway.filter.hook`); a plain function runs in a worker thread, a coroutine
function on the event loop; a hook that raises refuses nothing and answers 503 (the request may be
retried), since letting a broken moderation hook wave everything through is the worse failure.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import re
import unicodedata
from collections.abc import Awaitable, Callable, Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from swell.core.errors import ConfigError, Refused, Unavailable

log = logging.getLogger("swell.gateway")

HOOK_KEY = "gateway.filter.hook"
FILE_KEY = "gateway.filter.blocked_terms_file"
HOOK_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"
SEPARATORS = re.compile(r"[\W_]+")
MAX_TERMS = 100_000

Hook = Callable[[str, dict[str, Any]], "str | Awaitable[str | None] | None"]


class FilterConfig(BaseModel):
    """`gateway.filter` (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    blocked_terms: list[str] | None = Field(default=None, max_length=MAX_TERMS)  # None: built-in
    blocked_terms_file: str | None = None
    hook: str | None = Field(default=None, pattern=HOOK_PATTERN)


# -- matching ---------------------------------------------------------------------------------------


def normalised(text: str) -> str:
    """`text` as terms are matched in it: NFKC, accents dropped, casefolded, separators as one space,
    with a space at each end (so a whole word is ` word `)."""
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text))
    plain = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return f" {SEPARATORS.sub(' ', plain.casefold()).strip()} "


def builtin_terms() -> list[str]:
    """The terms shipped in the package's data file."""
    text = resources.files("swell.gateway").joinpath("data/blocked_terms.txt").read_text("utf-8")
    return list(_lines(text))


def _lines(text: str) -> Iterator[str]:
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            yield line


class BlockList:
    """Whole-word terms, matched in one pass of one regular expression over the normalised text."""

    def __init__(self, terms: Iterable[str]) -> None:
        cleaned = {normalised(term).strip(): term for term in terms}
        cleaned.pop("", None)  # a term of punctuation only would match every text
        self.terms = sorted(cleaned, key=lambda t: (-len(t), t))
        alternatives = "|".join(re.escape(term) for term in self.terms)
        self._pattern = re.compile(f" ({alternatives}) ") if self.terms else None

    def find(self, text: str) -> str | None:
        """The first blocked term `text` holds (normalised), or None."""
        if self._pattern is None:
            return None
        found = self._pattern.search(normalised(text))
        return found.group(1) if found else None

    def __len__(self) -> int:
        return len(self.terms)

    def __repr__(self) -> str:
        return f"BlockList({len(self.terms)} terms)"


def generated_texts(payload: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(field, text) for each text of a job input that something is generated from."""
    prompt = payload.get("prompt")
    if isinstance(prompt, str):
        yield "input.prompt", prompt
    elif isinstance(prompt, list):
        yield from ((f"input.prompt.{i}", p) for i, p in enumerate(prompt) if isinstance(p, str))
    for index, message in enumerate(_list(payload.get("messages"))):
        content = message.get("content") if isinstance(message, dict) else None
        where = f"input.messages.{index}.content"
        if isinstance(content, str):
            yield where, content
        for part in _list(content):
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield where, part["text"]
    texts = payload.get("texts")
    yield from ((f"input.texts.{i}", t) for i, t in enumerate(_list(texts)) if isinstance(t, str))


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


# -- the filter -------------------------------------------------------------------------------------


class RequestFilter:
    """A block list and an optional hook; `check(service, input)` raises `Refused`."""

    def __init__(self, terms: Iterable[str] = (), hook: Hook | None = None) -> None:
        self.blocked = BlockList(terms)
        self.hook = hook

    @classmethod
    def of(cls, config: FilterConfig) -> RequestFilter:
        """The filter `config` describes; ConfigError naming the key for a file or hook that is not
        there."""
        terms = builtin_terms() if config.blocked_terms is None else list(config.blocked_terms)
        if config.blocked_terms_file is not None:
            terms += _terms_file(config.blocked_terms_file)
        return cls(terms, load_hook(config.hook) if config.hook else None)

    def reason(self, service: str, payload: dict[str, Any]) -> Refused | None:
        """The block list's refusal of `payload`, or None (pure: no hook, no I/O)."""
        for field, text in generated_texts(payload):
            term = self.blocked.find(text)
            if term is not None:
                return Refused(
                    f"{field} holds a blocked term ({term!r}); the request is refused", field=field
                )
        return None

    async def check(self, service: str, payload: dict[str, Any]) -> None:
        """Raise `Refused` when the list or the hook refuses the job; `Unavailable` when the hook fails."""
        refusal = self.reason(service, payload)
        if refusal is not None:
            raise refusal
        if self.hook is None:
            return
        reason = await self._ask_hook(service, payload)
        if reason:
            raise Refused(str(reason), field="input")

    async def _ask_hook(self, service: str, payload: dict[str, Any]) -> str | None:
        assert self.hook is not None
        try:
            if inspect.iscoroutinefunction(self.hook):
                answer = await self.hook(service, payload)
            else:
                answer = await asyncio.to_thread(self.hook, service, payload)
                if inspect.isawaitable(answer):
                    answer = await answer
        except Exception as exc:
            log.exception("the request filter hook failed on a job for %s", service)
            raise Unavailable(f"the request filter failed ({type(exc).__name__}); try again") from None
        if answer is not None and not isinstance(answer, str):
            log.error("the request filter hook returned %r, not None or a reason string", answer)
            raise Unavailable("the request filter failed (a bad answer); try again")
        return answer

    def __repr__(self) -> str:
        hook = getattr(self.hook, "__qualname__", None)
        return f"RequestFilter(blocked={len(self.blocked)} terms, hook={hook!r})"


def _terms_file(path: str) -> list[str]:
    try:
        return list(_lines(Path(path).read_text("utf-8")))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the blocked terms file {path!r}: {exc}", key=FILE_KEY) from None


def load_hook(target: str) -> Hook:
    """The callable `module:function` names; ConfigError at `gateway.filter.hook` otherwise."""
    module_name, _, attribute = target.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}", key=HOOK_KEY) from None
    for part in attribute.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise ConfigError(f"{module_name!r} has no {attribute!r}", key=HOOK_KEY)
    if not callable(found):
        raise ConfigError(f"{target!r} is not callable", key=HOOK_KEY)
    return found  # type: ignore[no-any-return]


__all__ = [
    "BlockList",
    "FilterConfig",
    "Refused",
    "RequestFilter",
    "generated_texts",
    "load_hook",
    "normalised",
]
