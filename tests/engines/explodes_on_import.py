"""A module whose import fails on purpose: a function in it cannot be a callable engine's."""

raise RuntimeError("this module refuses to import")


def run(item: dict) -> dict:  # pragma: no cover - never reached
    return item
