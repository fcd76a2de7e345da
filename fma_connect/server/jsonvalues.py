"""Bounds on the JSON values the reference server takes in, and how it names them in errors.

orjson reads JSON nested up to 1024 levels but writes at most 254, and the server writes
back much of what it takes in (model fields, validation results, replayed updates), one
or two levels deeper inside its answers. Deep values also exhaust Python's recursion
(``repr``, jsonschema). So every JSON value the server keeps, other than weights (whose
decoding bounds them: numpy arrays have at most 64 dimensions), may nest at most
:data:`MAX_JSON_DEPTH` levels.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_JSON_DEPTH", "deeper_than", "json_type", "shown"]

#: Most levels of arrays and objects a kept JSON value may nest (weights aside).
MAX_JSON_DEPTH = 100
_WIDTH = 60
_JSON_TYPES = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    type(None): "null",
    list: "array",
    dict: "object",
}


def deeper_than(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a parsed JSON value nests more than ``limit`` levels of arrays and objects.

    Walks the value without recursion, so any depth orjson can read is safe to ask about.
    """
    if not isinstance(value, dict | list):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type (``string``, ``array``, ...)."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def shown(value: Any) -> str:
    """A short description of a value that arrived, for an error message.

    Scalars are shown (strings cut at 60 characters), with their JSON type; arrays and
    objects by their type and size only, so a message never grows with the input.
    """
    if isinstance(value, list | dict):
        kind, unit = ("an array", "item") if isinstance(value, list) else ("an object", "key")
        return f"{kind} of {len(value)} {unit}{'' if len(value) == 1 else 's'}"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"  # repr fails past 4300 digits
    text = repr(value)
    if len(text) > _WIDTH:
        text = f"{text[: _WIDTH - 3]}..."
    return f"{text} ({json_type(value)})"
