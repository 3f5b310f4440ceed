"""Writes the small TOML configs the tests and the demo hand to the daemon."""

from __future__ import annotations

import json
from typing import Any


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)  # strings and numbers: JSON's forms are valid TOML


def dump_toml(sections: dict[str, Any]) -> str:
    # Top-level keys that are not tables (`budgets = [{...}]`) go before the first table.
    lines = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in sections.items() if not isinstance(v, dict)]
    for name, values in sections.items():
        if not isinstance(values, dict):
            continue
        lines.append(f"[{name}]")
        lines.extend(f"{json.dumps(k)} = {toml_value(v)}" for k, v in values.items())
        lines.append("")
    return "\n".join(lines)
