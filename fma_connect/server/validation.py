"""Checking request bodies: model definitions, update fields, scores, JSON Schemas.

Each check raises :class:`~.errors.HTTPError` 400 with a DRF-shaped body
(``{"<field>": ["why"]}``) naming what was expected and what arrived.
"""

from __future__ import annotations

import uuid as uuid_module
from collections.abc import Mapping
from typing import Any

import jsonschema  # type: ignore[import-untyped,unused-ignore]

from .aggregation import AGGREGATORS, REQUIREMENTS, check_requirement_args
from .errors import HTTPError, bad_request
from .store import MODEL_FIELDS, Store

__all__ = [
    "MODEL_DEFAULTS",
    "check_against_schema",
    "model_fields",
    "optional_int",
    "reference",
]

#: What a new model gets for a field the request leaves out.
MODEL_DEFAULTS: dict[str, Any] = {
    "aggregator": "avg_values_if_data",
    "allow_aggregation": True,
    "requirement": None,
    "requirement_args": None,
    "update_schema": None,
    "client_agg_results_schema": None,
    "furthest_base_agg": None,
}
_REQUIRED = "This field is required."
#: Ids and counts are SQLite integers: 64-bit.
INT64_MAX = 2**63 - 1
_SCHEMA_FIELDS = ("update_schema", "client_agg_results_schema")


def model_fields(
    body: Mapping[str, Any], store: Store, *, current: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], list[str] | None]:
    """Validate a model definition (all of it, or a PATCH of ``current``).

    Returns:
        The fields to store and the client UUIDs (None when ``clients`` was not sent).
    """
    errors: dict[str, list[str]] = {}
    fields = {key: body[key] for key in MODEL_FIELDS if key in body}
    merged = {**MODEL_DEFAULTS, **(current or {}), **fields}

    name = merged.get("name")
    if not isinstance(name, str) or not name.strip():
        errors["name"] = [_REQUIRED if name is None else "Expected a non-empty string."]
    developer = merged.get("developer")
    if type(developer) is not int or not store.user_exists(developer):
        errors["developer"] = [f'Invalid pk "{developer}" - object does not exist.']
    if merged["aggregator"] not in AGGREGATORS:
        errors["aggregator"] = [_choice(merged["aggregator"], AGGREGATORS)]
    if type(merged["allow_aggregation"]) is not bool:
        errors["allow_aggregation"] = ["Must be a valid boolean."]
    requirement = merged["requirement"]
    if requirement is not None and requirement not in REQUIREMENTS:
        errors["requirement"] = [_choice(requirement, REQUIREMENTS)]
    else:
        problem = check_requirement_args(requirement, merged["requirement_args"])
        if problem:
            errors["requirement_args"] = [problem]
    furthest = merged["furthest_base_agg"]
    if furthest is not None and (type(furthest) is not int or not 1 <= furthest <= INT64_MAX):
        errors["furthest_base_agg"] = [f"Expected null or an integer from 1 to {INT64_MAX}."]
    for key in _SCHEMA_FIELDS:
        problem = _schema_problem(merged[key])
        if problem:
            errors[key] = [problem]

    clients = None
    if "clients" in body:
        clients, problem = _clients(body["clients"], store)
        if problem:
            errors["clients"] = [problem]
    if errors:
        raise HTTPError(400, errors)
    if current is None:
        fields = {key: merged[key] for key in MODEL_FIELDS}
    return fields, clients


def reference(body: Mapping[str, Any], field: str, *, required: bool) -> int | None:
    """Return the integer id in ``body[field]`` (a primary-key reference).

    Raises:
        HTTPError: missing when required, null when required, or not an integer.
    """
    if field not in body:
        if required:
            raise bad_request(field, _REQUIRED)
        return None
    value = body[field]
    if value is None:
        if required:
            raise bad_request(field, "This field may not be null.")
        return None
    if type(value) is float and value.is_integer() and abs(value) > INT64_MAX:
        # orjson reads integers beyond 64 bits as floats: no id is that large.
        raise bad_request(
            field, "Invalid pk - object does not exist (ids are 64-bit integers; this is larger)."
        )
    if type(value) is not int:
        raise bad_request(
            field, f"Incorrect type. Expected pk value, received {type(value).__name__}."
        )
    return value


def optional_int(raw: str | None, field: str) -> int | None:
    """Parse an integer query parameter (absent, empty or ``null`` -> None)."""
    if raw is None or raw.strip().lower() in ("", "null", "none"):
        return None
    try:
        return int(raw)
    except ValueError:
        raise bad_request(field, f"A valid integer is required, got {raw!r}.") from None


def check_against_schema(schema: Any, value: Any, field: str) -> None:
    """Validate ``value`` against a JSON Schema (no-op for a None schema).

    Raises:
        HTTPError: 400 ``{field: [reason]}`` on a mismatch.
    """
    if schema is None:
        return
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise bad_request(field, f"Does not match the model's schema at {where}: {error.message}")


def _schema_problem(schema: Any) -> str | None:
    if schema is None:
        return None
    if isinstance(schema, bool):
        return None  # true / false are complete schemas
    if not isinstance(schema, dict):
        return "Expected a JSON Schema (an object) or null."
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        return f"Not a valid JSON Schema: {exc.message}"
    return None


def _clients(value: Any, store: Store) -> tuple[list[str], str | None]:
    if not isinstance(value, list):
        return [], f'Expected a list of items but got type "{type(value).__name__}".'
    clients = []
    for item in value:
        try:
            client = str(uuid_module.UUID(str(item)))
        except ValueError:
            return [], f'"{item}" is not a valid UUID.'
        if not store.client_exists(client):
            return [], f'Invalid pk "{item}" - object does not exist.'
        clients.append(client)
    return clients, None


def _choice(value: Any, choices: Mapping[str, Any]) -> str:
    return f'"{value}" is not a valid choice; expected one of: {", ".join(sorted(choices))}.'
