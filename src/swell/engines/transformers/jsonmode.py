"""JSON mode: an incremental checker of JSON prefixes, character by character. Pure Python, no torch.

`response_format: {"type": "json_object"}` constrains a sequence to text that is always the prefix of
one JSON object (RFC 8259, the top-level value an object, as OpenAI's JSON mode has it) and ends as
soon as the object is complete. The checker is a pushdown automaton whose state is one immutable
tuple, so trying a candidate token is feeding its characters to a copy (`feed`), and throwing the
copy away when it fails costs nothing. `needed(state)` is the length of the shortest text that
completes the value from there: the constraint keeps every sequence able to finish within its
`max_tokens` (swell.engines.transformers.constrain).
"""

from __future__ import annotations

from typing import NamedTuple

WHITESPACE = frozenset(" \t\n\r")
DIGITS = frozenset("0123456789")
HEX = frozenset("0123456789abcdefABCDEF")
ESCAPES = frozenset('"\\/bfnrtu')
LITERALS = {"t": "rue", "f": "alse", "n": "ull"}
CLOSERS = {"{": "}", "[": "]"}

# Modes: what the next character may be.
START = "start"  # before the top-level object: whitespace or "{"
VALUE = "value"  # a value must start (after ":" or ",")
FIRST_ITEM = "first-item"  # after "[": a value or "]"
FIRST_KEY = "first-key"  # after "{": a key or "}"
KEY = "key"  # after "," in an object: a key
STRING = "string"
ESCAPE = "escape"  # after a backslash in a string
UNICODE = "unicode"  # in \uXXXX, `count` hex digits seen
COLON = "colon"  # after a key
AFTER = "after"  # after a value: "," or the container's closer
LITERAL = "literal"  # inside true/false/null, `rest` to go
MINUS, ZERO, INTEGER, DOT, FRACTION, EXP, EXP_SIGN, EXPONENT = (
    "minus", "zero", "integer", "dot", "fraction", "exp", "exp-sign", "exponent",
)  # fmt: skip
DONE = "done"  # the top-level object is complete
NUMBER_ENDED = frozenset({ZERO, INTEGER, FRACTION, EXPONENT})  # a number that may end here
NUMBER_OPEN = frozenset({MINUS, DOT, EXP, EXP_SIGN})  # a number that needs one more digit


class State(NamedTuple):
    """Where a JSON prefix stands: the open containers (`{` and `[`, innermost last), the mode, and
    whether the string being read is a key (`key`); `rest` is a literal's remaining characters or a
    \\u escape's hex digits still to come."""

    stack: str = ""
    mode: str = START
    key: bool = False
    rest: str = ""


INITIAL = State()


def feed(state: State | None, text: str) -> State | None:
    """The state after `text`, or None when `text` cannot continue a JSON object from `state`."""
    for char in text:
        if state is None:
            return None
        state = step(state, char)
    return state


def complete(state: State | None) -> bool:
    """Whether the text so far is one whole JSON object."""
    return state is not None and state.mode == DONE


def needed(state: State) -> int:
    """How many characters the shortest completion of `state` has (0 when it is complete)."""
    mode, closers = state.mode, len(state.stack)
    if mode == START:
        return 2  # {}
    if mode in (STRING, ESCAPE, UNICODE):
        inside = {STRING: 0, ESCAPE: 1, UNICODE: len(state.rest)}[mode]
        return inside + 1 + (2 if state.key else 0) + closers  # the quote, then :0 for a key
    extra = {VALUE: 1, KEY: 4, COLON: 2, LITERAL: len(state.rest)}.get(mode, 0)  # 0 | "":0 | :0
    return extra + (1 if mode in NUMBER_OPEN else 0) + closers


def step(state: State, char: str) -> State | None:
    """One character: the next state, or None."""
    mode = state.mode
    if mode in (STRING, ESCAPE, UNICODE):
        return _in_string(state, char)
    if mode == LITERAL:
        if not state.rest or char != state.rest[0]:
            return None
        rest = state.rest[1:]
        return state._replace(mode=LITERAL, rest=rest) if rest else _value_done(state)
    if mode in NUMBER_ENDED or mode in NUMBER_OPEN:
        number = _number(mode, char)
        if number is not None:
            return state._replace(mode=number)
        if mode in NUMBER_OPEN:
            return None
        return _after_value(_value_done(state), char)  # the number ended at this character
    if char in WHITESPACE:
        return state if mode != DONE else None
    return _structural(state, char)


def _structural(state: State, char: str) -> State | None:
    mode = state.mode
    if mode == START:
        return State("{", FIRST_KEY) if char == "{" else None
    if mode in (FIRST_KEY, KEY):
        if char == '"':
            return state._replace(mode=STRING, key=True)
        return _close(state, char) if mode == FIRST_KEY else None
    if mode == COLON:
        return state._replace(mode=VALUE) if char == ":" else None
    if mode in (VALUE, FIRST_ITEM):
        if mode == FIRST_ITEM and char == "]":
            return _close(state, char)
        return _start_value(state, char)
    if mode == AFTER:
        return _after_value(state, char)
    return None  # DONE: nothing may follow


def _start_value(state: State, char: str) -> State | None:
    if char == '"':
        return state._replace(mode=STRING, key=False)
    if char in "{[":
        return State(state.stack + char, FIRST_KEY if char == "{" else FIRST_ITEM)
    if char in LITERALS:
        return state._replace(mode=LITERAL, rest=LITERALS[char])
    if char == "-":
        return state._replace(mode=MINUS)
    if char in DIGITS:
        return state._replace(mode=ZERO if char == "0" else INTEGER)
    return None


def _after_value(state: State, char: str) -> State | None:
    """A character after a complete value inside a container: whitespace, a comma or its closer."""
    if char in WHITESPACE:
        return state
    if char == ",":
        return state._replace(mode=KEY if state.stack[-1] == "{" else VALUE)
    return _close(state, char)


def _close(state: State, char: str) -> State | None:
    if not state.stack or CLOSERS[state.stack[-1]] != char:
        return None
    return _value_done(State(state.stack[:-1], AFTER))


def _value_done(state: State) -> State:
    """A value just ended: the container goes on, or the top-level object is done."""
    if not state.stack:
        return State("", DONE)
    return State(state.stack, AFTER)


def _in_string(state: State, char: str) -> State | None:
    mode = state.mode
    if mode == ESCAPE:
        if char not in ESCAPES:
            return None
        return state._replace(mode=UNICODE, rest="xxxx") if char == "u" else state._replace(mode=STRING)
    if mode == UNICODE:
        if char not in HEX:
            return None
        rest = state.rest[1:]
        return state._replace(mode=UNICODE if rest else STRING, rest=rest)
    if char == '"':
        return state._replace(mode=COLON, key=False) if state.key else _value_done(state)
    if char == "\\":
        return state._replace(mode=ESCAPE)
    return state if ord(char) >= 0x20 else None  # control characters must be escaped


def _number(mode: str, char: str) -> str | None:
    """The number's next mode after `char`, or None when `char` is not part of it."""
    if char in DIGITS:
        return {
            MINUS: ZERO if char == "0" else INTEGER,
            ZERO: None,
            INTEGER: INTEGER,
            DOT: FRACTION,
            FRACTION: FRACTION,
            EXP: EXPONENT,
            EXP_SIGN: EXPONENT,
            EXPONENT: EXPONENT,
        }[mode]
    if char == "." and mode in (ZERO, INTEGER):
        return DOT
    if char in "eE" and mode in (ZERO, INTEGER, FRACTION):
        return EXP
    if char in "+-" and mode == EXP:
        return EXP_SIGN
    return None
