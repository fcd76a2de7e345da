"""Checking request input: model definitions, update fields, scores, ids in paths and queries.

Each check raises :class:`~.errors.HTTPError` 400 with a DRF-shaped body
(``{"<field>": ["why"]}``) naming what was expected and what arrived. Every field is
checked for its JSON type before it is used (``true`` is no integer, ``1.0`` no id),
and every kept JSON value for its depth (see :mod:`.jsonvalues`). JSON Schemas are
checked in :mod:`.schemas`.

The parts: :mod:`.validation_parsing` parses what arrives before its fields are checked
(a JSON body that must be an object, an integer in a query, a row id in a path), and
:mod:`.validation_tensors` checks the names and dtypes sent beside plain layer lists.
Model definitions and the fields of updates are checked here.
"""

from __future__ import annotations

import uuid as uuid_module
from collections.abc import Mapping
from typing import Any

from ..codecs.base import read_tag
from ..codecs.sparse_delta import VALUE_CODINGS
from ..exceptions import DecodeError
from ..plugins import default_aggregator_registry
from ..registry import AggregatorRegistry
from .aggregation import REQUIREMENTS, check_requirement_args
from .aggregators import AggregatorArgsError
from .errors import HTTPError, bad_request
from .jsonvalues import MAX_JSON_DEPTH, deeper_than, shown
from .policies import POLICY_FIELDS, check_policy
from .schemas import check_against_schema, schema_problem
from .store import Store
from .store_models import MODEL_FIELDS
from .validation_parsing import optional_int

__all__ = [
    "ENROLMENTS",
    "MODEL_DEFAULTS",
    "UPDATE_FIELDS",
    "check_against_schema",
    "check_depth",
    "model_fields",
    "query_fields",
    "reference",
    "update_fields",
]

#: What a new model gets for a field the request leaves out.
MODEL_DEFAULTS: dict[str, Any] = {
    "aggregator": "avg_values_if_data",
    "aggregator_args": None,
    "allow_aggregation": True,
    "requirement": None,
    "requirement_args": None,
    "update_schema": None,
    "client_agg_results_schema": None,
    "furthest_base_agg": None,
    "aggregate_fraction": None,
    "aggregate_values": None,
    **dict.fromkeys(POLICY_FIELDS),
    "enrolment": "open",
}
#: How clients join a model (docs/SECURITY.md): anyone, with a one-time token from the
#: admin, or with a public key on the model's allow-list.
ENROLMENTS = ("open", "token", "keys")
_REQUIRED = "This field is required."
#: Ids and counts are SQLite integers: 64-bit.
INT64_MAX = 2**63 - 1
_SCHEMA_FIELDS = ("update_schema", "client_agg_results_schema")
#: The fields of an update besides its weights, in a JSON body or a binary body's query.
UPDATE_FIELDS = ("federated_model", "base_aggregate", "num_examples")
#: Fields that hold weights: their decoding bounds them (and walking them would be slow).
_WEIGHT_FIELDS = frozenset({"data", "initial_model"})


def model_fields(
    body: Mapping[str, Any],
    store: Store,
    *,
    current: Mapping[str, Any] | None = None,
    aggregators: AggregatorRegistry | None = None,
) -> tuple[dict[str, Any], list[str] | None]:
    """Validate a model definition (all of it, or a PATCH of ``current``).

    A PATCH that changes ``aggregator`` without ``aggregator_args`` drops the old
    aggregator's arguments (they were checked against it, not the new one).

    Args:
        body: The request's fields.
        store: For the developer and clients named.
        current: The model a PATCH changes (None: a new model).
        aggregators: The installed aggregators (default: every installed one).

    Returns:
        The fields to store and the client UUIDs (None when ``clients`` was not sent).
    """
    check_depth(body)
    errors: dict[str, list[str]] = {}
    fields = {key: body[key] for key in MODEL_FIELDS if key in body}
    if (
        current is not None
        and "aggregator" in fields
        and fields["aggregator"] != current.get("aggregator")
        and "aggregator_args" not in fields
    ):
        fields["aggregator_args"] = None
    merged = {**MODEL_DEFAULTS, **(current or {}), **fields}

    name = merged.get("name")
    if not isinstance(name, str) or not name.strip():
        errors["name"] = [
            _REQUIRED if name is None else f"Expected a non-empty string, got {shown(name)}."
        ]
    developer = merged.get("developer")
    if type(developer) is not int:
        errors["developer"] = [f"Incorrect type. Expected pk value, received {shown(developer)}."]
    elif not store.user_exists(developer):
        errors["developer"] = [f'Invalid pk "{developer}" - object does not exist.']
    aggregators = default_aggregator_registry() if aggregators is None else aggregators
    aggregator = merged["aggregator"]
    if not isinstance(aggregator, str) or aggregator not in aggregators:
        errors["aggregator"] = [_choice(aggregator, dict.fromkeys(aggregators.names()))]
    else:
        try:
            aggregators.get(aggregator).check_args(merged["aggregator_args"])
        except AggregatorArgsError as exc:
            errors["aggregator_args"] = [str(exc)]
    if type(merged["allow_aggregation"]) is not bool:
        errors["allow_aggregation"] = [
            f"Must be a valid boolean, got {shown(merged['allow_aggregation'])}."
        ]
    requirement = merged["requirement"]
    args = merged["requirement_args"]
    if requirement is not None and (
        not isinstance(requirement, str) or requirement not in REQUIREMENTS
    ):
        errors["requirement"] = [_choice(requirement, REQUIREMENTS)]
    elif args is not None and (not isinstance(args, list) or len(args) > 1):
        # No requirement takes more than one argument; the message stays short.
        errors["requirement_args"] = [
            f"Expected null, [] or [x] (for require_x_updates), got {shown(args)}."
        ]
    else:
        problem = check_requirement_args(requirement, args)
        if problem:
            errors["requirement_args"] = [problem]
    furthest = merged["furthest_base_agg"]
    if furthest is not None and (type(furthest) is not int or not 1 <= furthest <= INT64_MAX):
        errors["furthest_base_agg"] = [
            f"Expected null or an integer from 1 to {INT64_MAX}, got {shown(furthest)}."
        ]
    fraction = merged["aggregate_fraction"]
    if fraction is not None and (
        type(fraction) not in (int, float) or not 0 < fraction <= 1 or fraction != fraction
    ):
        errors["aggregate_fraction"] = [
            f"Expected null or a number greater than 0 and at most 1, got {shown(fraction)}."
        ]
    coding = merged["aggregate_values"]
    if coding is not None and (not isinstance(coding, str) or coding not in VALUE_CODINGS):
        errors["aggregate_values"] = [_choice(coding, VALUE_CODINGS)]
    enrolment = merged["enrolment"]
    if enrolment is None and "enrolment" not in fields:
        enrolment = merged["enrolment"] = "open"  # a model from before enrolment
    if not isinstance(enrolment, str) or enrolment not in ENROLMENTS:
        errors["enrolment"] = [_choice(enrolment, dict.fromkeys(ENROLMENTS))]
    for key in POLICY_FIELDS:
        problem = check_policy(key, merged[key])
        if problem:
            errors[key] = [problem]
    for key in _SCHEMA_FIELDS:
        problem = schema_problem(merged[key])
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
    if type(value) is not int:  # bool is an int subclass: true is no id
        raise bad_request(field, f"Incorrect type. Expected pk value, received {shown(value)}.")
    return value


def update_fields(body: Mapping[str, Any], *, json_body: bool = True) -> dict[str, Any]:
    """Check the fields of an update, in its JSON body or its binary body's query.

    A fresh update and an idempotent replay of one go through the same checks, so a
    replay cannot slip in a value a fresh request refuses (``1.0`` or ``true`` for
    ``1``). Nothing here reads the database: what exists is checked by the service.

    Args:
        body: The JSON body, or the query fields of a binary body (see
            :func:`query_fields`).
        json_body: The weights are in ``body["data"]``: they must be there, a codec tag
            in them must be well formed, and no other field may nest too deep.

    Returns:
        ``federated_model``, ``base_aggregate`` and ``num_examples``, checked.

    Raises:
        HTTPError: 400 naming every bad field.
    """
    errors: dict[str, list[str]] = {}
    fields: dict[str, Any] = {}
    for name, required in (("federated_model", True), ("base_aggregate", False)):
        try:
            fields[name] = reference(body, name, required=required)
        except HTTPError as exc:
            errors.update(exc.body)
    examples = body.get("num_examples")
    if examples is not None and (type(examples) is not int or not 1 <= examples <= INT64_MAX):
        errors["num_examples"] = [
            f"Expected null or an integer from 1 to {INT64_MAX}, got {shown(examples)}."
        ]
    fields["num_examples"] = examples
    if json_body:
        problem = _data_problem(body)
        if problem is not None:
            errors["data"] = [problem]
        errors.update(_too_deep(body))
    if errors:
        raise HTTPError(400, errors)
    return fields


def query_fields(query: Mapping[str, str]) -> dict[str, int | None]:
    """The update fields in the query of a binary update (only those it names).

    Raises:
        HTTPError: 400 for a value that is not an integer.
    """
    return {name: optional_int(query.get(name), name) for name in UPDATE_FIELDS if name in query}


def check_depth(body: Mapping[str, Any]) -> None:
    """Refuse a body whose fields (weights aside) nest more than the server keeps.

    Raises:
        HTTPError: 400 naming each such field.
    """
    errors = _too_deep(body)
    if errors:
        raise HTTPError(400, errors)


def _too_deep(body: Mapping[str, Any]) -> dict[str, list[str]]:
    return {
        key: [f"Nested deeper than {MAX_JSON_DEPTH} levels of arrays and objects, the most kept."]
        for key, value in body.items()
        if (key not in _WEIGHT_FIELDS or isinstance(value, dict)) and deeper_than(value)
    }


def _data_problem(body: Mapping[str, Any]) -> str | None:
    """Why the ``data`` of a JSON update is missing or its codec tag malformed, or None."""
    if "data" not in body:
        return _REQUIRED
    if body["data"] is None:
        return "This field may not be null."
    try:
        read_tag(body["data"])
    except DecodeError as exc:
        return f"{str(exc)[:1].upper()}{str(exc)[1:]}."
    return None


def _clients(value: Any, store: Store) -> tuple[list[str], str | None]:
    if not isinstance(value, list):
        return [], f"Expected a list of client UUIDs, got {shown(value)}."
    clients = []
    for item in value:
        try:
            if not isinstance(item, str):
                raise ValueError(item)
            client = str(uuid_module.UUID(item))
        except ValueError:
            return [], f"{shown(item)} is not a valid UUID."
        if not store.client_exists(client):
            return [], f"Invalid pk {shown(item)} - object does not exist."
        clients.append(client)
    return clients, None


def _choice(value: Any, choices: Mapping[str, Any]) -> str:
    return f"{shown(value)} is not a valid choice; expected one of: {', '.join(sorted(choices))}."
