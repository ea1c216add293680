"""Functions run by the callable engine in worker tests."""

import time
from typing import Any

from swell.core.errors import ValidationError


def echo(item: dict[str, Any]) -> dict[str, Any]:
    return {"echo": item}


def fail(item: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError("boom")


def invalid(item: dict[str, Any]) -> dict[str, Any]:
    raise ValidationError("bad value", field="input.x")


def sleep(item: dict[str, Any]) -> dict[str, Any]:
    time.sleep(float(item.get("seconds", 0.5)))
    return {"slept": item.get("seconds", 0.5)}
