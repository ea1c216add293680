"""AUTOMATIC1111's `parameters` text ("infotext"), written into every PNG and readable back.

The format, as A1111's PNG Info tab reads it:

    <prompt, possibly several lines>
    Negative prompt: <negative prompt>
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, ...

The last line is `key: value` pairs separated by ", "; a value holding a comma, a colon or a quote is
written as a JSON string (A1111's `quote`). LoRAs are named in the prompt as `<lora:NAME:WEIGHT>`, as
A1111 writes them, so "send to txt2img" there reproduces the request.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

NEGATIVE = "Negative prompt: "
PAIR = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def quote(value: object) -> str:
    """A value as A1111 writes it: bare when it holds no comma, colon, quote or newline."""
    text = str(value)
    if not any(ch in text for ch in ',:"\n'):
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    if text.startswith('"') and text.endswith('"'):
        try:
            return str(json.loads(text))
        except json.JSONDecodeError:
            return text
    return text


def format_infotext(prompt: str, negative: str, fields: Mapping[str, object]) -> str:
    """The infotext of one image; `fields` in order (None values left out)."""
    line = ", ".join(f"{key}: {quote(value)}" for key, value in fields.items() if value is not None)
    lines = [prompt]
    if negative:
        lines.append(f"{NEGATIVE}{negative}")
    return "\n".join([*lines, line])


def lora_prompt(prompt: str, loras: list[tuple[str, float]]) -> str:
    """`prompt` with A1111's `<lora:NAME:WEIGHT>` tags for the adapters that ran."""
    tags = " ".join(f"<lora:{name}:{weight:g}>" for name, weight in loras)
    return f"{prompt} {tags}".strip() if tags else prompt


def parse_infotext(text: str) -> tuple[str, str, dict[str, str]]:
    """(prompt, negative prompt, fields) of an infotext; values are strings, unquoted."""
    *head, last = text.strip("\n").split("\n")
    if len(PAIR.findall(last)) < 3:  # no parameters line: it is all prompt
        head, last = [*head, last], ""
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    for line in head:
        if line.startswith(NEGATIVE) or negative_lines:
            negative_lines.append(line.removeprefix(NEGATIVE) if not negative_lines else line)
        else:
            prompt_lines.append(line)
    fields = {key.strip(): unquote(value.strip()) for key, value in PAIR.findall(last)}
    return "\n".join(prompt_lines), "\n".join(negative_lines), fields
