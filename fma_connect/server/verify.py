"""The admin's check of a model's stored updates and aggregates (``fma-connect admin verify``).

Every stored update of the model is read again from the blob store and its SHA-256
recomputed. A signed update's digest must equal the one stored when it arrived (else its
bytes were altered in storage), and its signature must verify, with the key that made it
(kept after rotation or revocation), over the update's stored fields and that digest
(else the record was altered); the signature covers the update's codec and
Idempotency-Key too. An unsigned update is a problem on a model that requires enrolment,
and on an open model when its client had an active key when it was stored (an enrolled
client signs every update: its signature row was deleted). Then each aggregate's inputs
(the updates whose ``applied_aggregate`` is that aggregate) must be of the model,
COMPLETE, pass the checks above, and not come from a client or key revoked before the
aggregate was made (a revocation marks the waiting updates INVALID, so such an input
means the records were altered); their count and the SHA-256 of their sorted ids must be
those the round recorded (an input deleted, or one linked since, is found), and the
aggregate's blob must have the SHA-256 recorded (models of ``token`` or ``keys`` only:
see :meth:`~.rounds.Rounds._with_digest`). An aggregate without inputs, and a COMPLETE
update without a valid aggregate, are reported too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import TYPE_CHECKING, Any

from ..signing import canonical_update, verify
from .keys import REVOKED
from .store_core import COMPLETE, INVALID, Row
from .store_rounds import inputs_sha256

if TYPE_CHECKING:
    from .service import Service

__all__ = ["verify_model"]

_UPDATES = (
    "SELECT u.id, u.client, u.federated_model, u.base_aggregate, u.num_examples, u.status, "
    "u.applied_aggregate, u.idempotency_key, u.created_on, b.filename, b.codec, "
    "b.tensor_names, s.key_id, s.sha256, s.signature, k.public_key, "
    "k.status AS key_status, k.client AS key_client, k.revoked_on AS key_revoked_on, "
    "c.revoked_on AS client_revoked_on, "
    "(SELECT MIN(x.key_id) FROM client_keys x WHERE x.client = u.client "
    "AND x.created_on <= u.created_on AND (x.retired_on IS NULL OR x.retired_on > u.created_on)) "
    "AS key_then "
    "FROM updates u JOIN blobs b ON b.id = u.blob "
    "LEFT JOIN clients c ON c.uuid = u.client "
    "LEFT JOIN update_signatures s ON s.update_id = u.id "
    "LEFT JOIN client_keys k ON k.key_id = s.key_id "
    "WHERE u.federated_model = ? ORDER BY u.id"
)


def verify_model(service: Service, model: Row) -> dict[str, Any]:
    """Check a model's stored updates and aggregates; return the report.

    Returns:
        ``{"federated_model", "enrolment", "ok", "updates", "signed", "unsigned",
        "aggregates", "problems": [{"update" or "aggregate": id, "problem": text}],
        "notes": [...], "inputs": {aggregate id: [update ids]}}``; ``ok`` is whether
        ``problems`` is empty.
    """
    model_id = model["id"]
    enrolment = model.get("enrolment") or "open"
    problems: list[dict[str, Any]] = []
    notes: list[dict[str, Any]] = []
    failed: set[int] = set()
    signed = unsigned = 0
    updates = service.store.all(_UPDATES, (model_id,))
    for row in updates:
        problem = _check_update(service, row, enrolment)
        if row["signature"] is not None:
            signed += 1
            if row["key_status"] == REVOKED:
                note = f"signed by key {row['key_id']}, since revoked"
                if row["status"] == INVALID and row["applied_aggregate"] is None:
                    note += "; set aside (INVALID), in no aggregate"
                notes.append({"update": row["id"], "note": note})
        else:
            unsigned += 1
        if problem is not None:
            failed.add(row["id"])
            problems.append({"update": row["id"], "problem": problem})
    inputs = _aggregate_inputs(service, model_id, updates, failed, problems)
    return {
        "federated_model": model_id,
        "enrolment": enrolment,
        "ok": not problems,
        "updates": len(updates),
        "signed": signed,
        "unsigned": unsigned,
        "aggregates": len(inputs),
        "problems": problems,
        "notes": notes,
        "inputs": {str(k): v for k, v in inputs.items()},
    }


def _check_update(service: Service, row: Row, enrolment: str) -> str | None:
    """What is wrong with one stored update, or None."""
    try:
        digest = stored_sha256(service, row["filename"])
    except OSError as exc:
        return f"its payload cannot be read from the blob store: {exc}"
    if row["signature"] is None:
        if enrolment != "open":
            return (
                f"it is unsigned, on a model that requires enrolment ({enrolment!r}); "
                f"its payload's sha256 is {digest}"
            )
        if row["key_then"] is not None:
            return (
                f"it is unsigned, but its client had an active key ({row['key_then']}) when "
                f"it was stored ({row['created_on']}), and an enrolled client signs every "
                "update: its signature record was deleted"
            )
        return None
    if digest != row["sha256"]:
        return (
            f"its stored payload (sha256 {digest}) is not the payload it was signed and "
            f"stored with (sha256 {row['sha256']}): the bytes were altered in storage"
        )
    if row["public_key"] is None or row["key_client"] != row["client"]:
        return f"the key that signed it ({row['key_id']}) is not a key of client {row['client']}"
    try:
        public_key = base64.b64decode(row["public_key"])
        signature = base64.b64decode(row["signature"])
    except (binascii.Error, ValueError):
        return "its stored key or signature is not base64: the record was altered"
    text = canonical_update(
        row["client"],
        row,  # its federated_model, base_aggregate and num_examples as stored
        row["tensor_names"],
        row["codec"],
        row["idempotency_key"] or "",
        row["sha256"],
    )
    if not verify(public_key, text, signature):
        return (
            f"its signature by key {row['key_id']} does not verify over its stored fields and "
            "digest: the record (client, base_aggregate, num_examples, tensor_names, codec, "
            "Idempotency-Key or digest) was altered"
        )
    return None


def _aggregate_inputs(
    service: Service,
    model_id: int,
    updates: list[Row],
    failed: set[int],
    problems: list[dict[str, Any]],
) -> dict[int, list[int]]:
    """Each aggregate's inputs (update ids); their problems are added to ``problems``."""
    made = {
        row["id"]: row
        for row in service.store.all(
            "SELECT a.id, a.created_on, a.inputs, a.inputs_sha256, a.blob_sha256, b.filename "
            "FROM aggregates a JOIN blobs b ON b.id = a.blob WHERE a.federated_model = ? "
            "ORDER BY a.id",
            (model_id,),
        )
    }
    by_id = {row["id"]: row for row in updates}
    inputs: dict[int, list[int]] = {a: [] for a in made}
    # Inputs of this model's aggregates, wherever they are (another model's update would
    # be a forged link).
    linked = service.store.all(
        "SELECT u.id, u.federated_model, u.status, u.applied_aggregate FROM updates u "
        "JOIN aggregates a ON a.id = u.applied_aggregate WHERE a.federated_model = ? "
        "ORDER BY u.id",
        (model_id,),
    )
    for row in linked:
        aggregate = row["applied_aggregate"]
        inputs[aggregate].append(row["id"])
        problem: str | None
        if row["federated_model"] != model_id:
            problem = f"it averaged update {row['id']} of another model ({row['federated_model']})"
        elif row["status"] != COMPLETE:
            problem = f"it lists update {row['id']}, whose status is {row['status']}, not COMPLETE"
        elif row["id"] in failed:
            problem = f"it averaged update {row['id']}, which fails verification"
        else:
            problem = _revoked_before(by_id.get(row["id"]), made[aggregate]["created_on"])
            if problem is None:
                continue
        problems.append({"aggregate": aggregate, "problem": problem})
    for aggregate, ids in inputs.items():
        if not ids:
            problems.append({"aggregate": aggregate, "problem": "it lists no input updates"})
        recorded = _recorded_inputs(made[aggregate], ids) or _blob_digest(service, made[aggregate])
        if recorded is not None:
            problems.append({"aggregate": aggregate, "problem": recorded})
    for row in updates:
        if row["status"] == COMPLETE and row["applied_aggregate"] not in inputs:
            problems.append(
                {
                    "update": row["id"],
                    "problem": f"it is COMPLETE but names no aggregate of the model "
                    f"(applied_aggregate {row['applied_aggregate']})",
                }
            )
    return inputs


def stored_sha256(service: Service, filename: str) -> str:
    """The SHA-256 (hex) of a blob's stored bytes.

    Raises:
        OSError: the blob store cannot give them.
    """
    data = service.blobs.read(filename)
    try:
        return hashlib.sha256(memoryview(data).cast("B")).hexdigest()
    finally:
        del data


def _revoked_before(update: Row | None, made_on: str) -> str | None:
    """Why an aggregate must not hold this input: its client or signing key was revoked
    before the aggregate was made (times are the stock format, ordered as text)."""
    if update is None:
        return None
    client_revoked = update["client_revoked_on"]
    if client_revoked is not None and client_revoked < made_on:
        return (
            f"it averaged update {update['id']} of client {update['client']}, revoked before "
            f"the aggregate was made ({client_revoked} < {made_on})"
        )
    key_revoked = update["key_revoked_on"]
    if key_revoked is not None and key_revoked < made_on:
        return (
            f"it averaged update {update['id']}, signed by key {update['key_id']}, revoked "
            f"before the aggregate was made ({key_revoked} < {made_on})"
        )
    return None


def _recorded_inputs(aggregate: Row, ids: list[int]) -> str | None:
    """Whether the inputs found are those the round recorded (None: they are, or the
    aggregate predates the record)."""
    if aggregate["inputs"] is None:
        return None
    if aggregate["inputs"] != len(ids) or aggregate["inputs_sha256"] != inputs_sha256(ids):
        return (
            f"its inputs are not those its round recorded: {aggregate['inputs']} updates "
            f"then (ids sha256 {aggregate['inputs_sha256']}), {len(ids)} now "
            f"({', '.join(map(str, ids)) or 'none'}): an input was deleted or relinked"
        )
    return None


def _blob_digest(service: Service, aggregate: Row) -> str | None:
    """Whether the aggregate's stored bytes have the SHA-256 its round recorded."""
    if aggregate["blob_sha256"] is None:
        return None
    try:
        digest = stored_sha256(service, aggregate["filename"])
    except OSError as exc:
        return f"its blob cannot be read from the blob store: {exc}"
    if digest != aggregate["blob_sha256"]:
        return (
            f"its stored blob (sha256 {digest}) is not the one its round wrote (sha256 "
            f"{aggregate['blob_sha256']}): the bytes were altered in storage"
        )
    return None
