"""The JSON-prefix checker of JSON mode, character by character, against Python's own parser."""

from __future__ import annotations

import json

import pytest

from swell.engines.transformers import jsonmode

DOCUMENTS = [
    "{}",
    ' { "a" : 1 , "b" : [ ] }',
    '{"a": [1, -2.5e+3, 0, 0.25E-1, true, false, null, "x\\"y\\u00e9\\n", {"b": {}}, []]}',
    '{"nested": [[[{"k": "v"}]]], "s": "é€🙂"}',
]
NOT_PREFIXES = [
    "[1]", '"x"', "1", "{,}", '{"a" 1}', '{"a":01}', '{"a":1,}', '{"a":tru3}', "{}}", '{"a":"\x01"}',
    '{"a":-}', '{"a":1.}', '{"a":"\\x"}', "{} {}",
]  # fmt: skip


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_prefix_of_a_document_is_accepted_and_only_the_whole_is_complete(document: str) -> None:
    json.loads(document)
    state: jsonmode.State | None = jsonmode.INITIAL
    for end, char in enumerate(document, start=1):
        state = jsonmode.feed(state, char)
        assert state is not None, document[:end]
        assert jsonmode.complete(state) == (end == len(document.rstrip()))
        assert jsonmode.needed(state) <= len(document) - end or jsonmode.complete(state)


@pytest.mark.parametrize("text", NOT_PREFIXES)
def test_what_cannot_begin_a_json_object_is_refused(text: str) -> None:
    assert jsonmode.feed(jsonmode.INITIAL, text) is None


@pytest.mark.parametrize(
    ("prefix", "shortest"),
    [("", "{}"), ("{", "}"), ('{"', '":0}'), ('{"a"', ":0}"), ('{"a":', "0}"), ('{"a":[', "]}"),
     ('{"a":[1', "]}"), ('{"a":-', "0}"), ('{"a":"\\u00', '00"}'), ('{"a":tr', "ue}"), ('{"a":1,', '"":0}')],
)  # fmt: skip
def test_needed_is_the_length_of_the_shortest_completion(prefix: str, shortest: str) -> None:
    state = jsonmode.feed(jsonmode.INITIAL, prefix)
    assert state is not None
    assert jsonmode.needed(state) == len(shortest)
    assert jsonmode.complete(jsonmode.feed(state, shortest))
    json.loads(prefix + shortest)
