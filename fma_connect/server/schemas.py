"""The JSON Schemas of models (``update_schema``, ``client_agg_results_schema``).

A schema is checked when a model is defined, and applied to what clients send. Both
steps answer 400 with a reason, never 500: a schema must be an object (or a boolean)
of a known draft, nest at most :data:`~.jsonvalues.MAX_JSON_DEPTH` levels, and every
``$ref`` in it must resolve within it (or to a draft's meta-schema). This server never
fetches a remote ``$ref``: jsonschema would, by default, open any URL named there
(``http://``, ``file://``), from inside a request.
"""

from __future__ import annotations

from typing import Any

import jsonschema  # type: ignore[import-untyped,unused-ignore]
import jsonschema_specifications  # type: ignore[import-untyped,unused-ignore]
import referencing
import referencing.jsonschema
from referencing.exceptions import Unresolvable

from .errors import bad_request
from .jsonvalues import MAX_JSON_DEPTH, deeper_than, shown

__all__ = ["check_against_schema", "schema_problem"]

#: What ``$ref`` may reach: the schema itself and the drafts' meta-schemas, nothing remote.
_REFERENCES: referencing.Registry[Any] = referencing.Registry().combine(
    jsonschema_specifications.REGISTRY
)
_MESSAGE_WIDTH = 300
_NO_DRAFT: Any = None
#: Keywords whose first step resolves like ``$ref`` (``$recursiveRef`` is always "#").
_REFERENCE_KEYWORDS = ("$ref", "$dynamicRef")
_TRIAL_VALUES: tuple[Any, ...] = (None, 0, "", [], {}, [0], {"": 0})
_TOO_DEEP = f"Nested deeper than {MAX_JSON_DEPTH} levels of arrays and objects, the most kept."


def schema_problem(schema: Any) -> str | None:
    """Why ``schema`` cannot be a model's schema, or None (null means no schema)."""
    if schema is None or isinstance(schema, bool):
        return None  # no schema; true / false are complete schemas
    if not isinstance(schema, dict):
        return f"Expected a JSON Schema (an object) or null, got {shown(schema)}."
    if deeper_than(schema):
        return _TOO_DEEP
    cls = _validator_class(schema)
    if isinstance(cls, str):
        return cls
    try:
        cls.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        return f"Not a valid JSON Schema: {_cut(exc.message)}"
    except RecursionError:
        return _TOO_DEEP
    return _subschema_problem(cls, schema)


def check_against_schema(schema: Any, value: Any, field: str) -> None:
    """Validate ``value`` against a model's JSON Schema (no-op for a None schema).

    Raises:
        HTTPError: 400 ``{field: [reason]}`` on a mismatch, and when the value cannot be
            checked: nested too deep, or the schema recurses without end or has a
            ``$ref`` that does not resolve (possible in schemas stored before these
            were refused at model creation).
    """
    if schema is None:
        return
    if deeper_than(value):
        raise bad_request(field, _TOO_DEEP)
    cls = _validator_class(schema) if isinstance(schema, dict) else None
    if isinstance(cls, str):
        if not isinstance(schema["$schema"], str):
            raise bad_request(field, f"The model's schema cannot be applied: {cls}")
        cls = None  # stored before unknown drafts were refused: the latest, as jsonschema did
    validator = (cls or jsonschema.validators.validator_for({}))(schema, registry=_REFERENCES)
    try:
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    except ValueError as exc:  # a subschema's $schema is not a URI (jsonschema reads it late)
        raise bad_request(field, f"The model's schema cannot be applied: {exc!s:.80}") from None
    except RecursionError:
        raise bad_request(
            field,
            "Cannot be checked against the model's schema: checking recursed too deep "
            "(the schema's $ref recurses without end, or the value nests too deep for it).",
        ) from None
    except Unresolvable as exc:
        raise bad_request(
            field, f"The model's schema cannot be applied: a $ref does not resolve ({exc!s:.80})."
        ) from None
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        message = f"Does not match the model's schema at {where}: {_cut(error.message)}"
        raise bad_request(field, message)


def _validator_class(schema: dict[str, Any]) -> Any:
    """The jsonschema validator class of the draft ``$schema`` names, or why there is none."""
    latest = jsonschema.validators.validator_for({})
    if "$schema" not in schema:
        return latest
    dialect = schema["$schema"]
    expected = f"a string naming a JSON Schema draft, e.g. {latest.META_SCHEMA['$schema']!r}"
    if not isinstance(dialect, str):
        return f"$schema must be {expected}, got {shown(dialect)}."
    try:
        # With no default, an unknown $schema is None, not the latest draft with a warning.
        cls = jsonschema.validators.validator_for(schema, default=_NO_DRAFT)
    except ValueError:  # not even a URI
        cls = None
    if cls is None:
        return f"$schema must be {expected}; {shown(dialect)} names no draft this server knows."
    return cls


def _subschema_problem(cls: Any, schema: dict[str, Any]) -> str | None:
    """Why a subschema cannot be applied: a ``$ref`` that does not resolve, a bad ``$schema``.

    Visits the subschemas the draft defines (the ones validation can reach), each with
    the base URI its ``$id`` scope gives it, without recursion.
    """
    specification = referencing.jsonschema.specification_with(cls.ID_OF(cls.META_SCHEMA))
    root = specification.create_resource(schema)
    pending = [(root, _REFERENCES.resolver_with_root(root))]
    while pending:
        resource, resolver = pending.pop()
        contents = resource.contents
        if not isinstance(contents, dict):
            continue
        if resource is not root and "$schema" in contents:
            found = _validator_class(contents)
            if isinstance(found, str):
                return found
        for keyword in _REFERENCE_KEYWORDS:
            ref = contents.get(keyword)
            if not isinstance(ref, str):
                continue
            try:
                resolver.lookup(ref)
            except (Unresolvable, ValueError):
                return (
                    f"{keyword} {shown(ref)} does not resolve within the schema (this server "
                    "never fetches remote schemas: put the definition in $defs)."
                )
        pending.extend((sub, resolver.in_subresource(sub)) for sub in resource.subresources())
    return _endless(cls, schema)


def _endless(cls: Any, schema: dict[str, Any]) -> str | None:
    """Why ``schema`` recurses without end on a small value (a ``$ref`` cycle), or None.

    A cycle may hide behind keywords only some values reach; those are refused when
    met (see :func:`check_against_schema`). These values catch the usual ones.
    """
    validator = cls(schema, registry=_REFERENCES)
    try:
        for value in _TRIAL_VALUES:
            for _ in validator.iter_errors(value):
                pass
    except RecursionError:
        return "Its $ref recurses without end: values would be refused, not checked."
    except (Unresolvable, ValueError) as exc:
        return f"It cannot be applied: {exc!s:.80}"
    return None


def _cut(message: str) -> str:
    """jsonschema's messages quote the instance: cut them, so a large value is not echoed."""
    return message if len(message) <= _MESSAGE_WIDTH else f"{message[: _MESSAGE_WIDTH - 3]}..."
