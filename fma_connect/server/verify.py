"""The admin's check of a model's stored updates and aggregates (``fma-connect admin verify``).

Every stored update of the model is read again from the blob store and its SHA-256
recomputed. A signed update's digest must equal the one stored when it arrived (else its
bytes were altered in storage), and its signature must verify, with the key that made it
(kept after rotation or revocation), over the update's stored fields and that digest
(else the record was altered). An unsigned update is a problem only on a model that
requires enrolment. Then each aggregate's inputs (the updates whose
``applied_aggregate`` is that aggregate) must be of the model, COMPLETE and pass the
checks above; an aggregate without inputs, and a COMPLETE update without a valid
aggregate, are reported too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import TYPE_CHECKING, Any

from ..signing import canonical_update, verify
from .keys import REVOKED
from .store import COMPLETE, Row

if TYPE_CHECKING:
    from .service import Service

__all__ = ["verify_model"]

_UPDATES = (
    "SELECT u.id, u.client, u.federated_model, u.base_aggregate, u.num_examples, u.status, "
    "u.applied_aggregate, b.filename, b.tensor_names, s.key_id, s.sha256, s.signature, "
    "k.public_key, k.status AS key_status, k.client AS key_client "
    "FROM updates u JOIN blobs b ON b.id = u.blob "
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
                notes.append(
                    {"update": row["id"], "note": f"signed by key {row['key_id']}, since revoked"}
                )
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
        data = service.blobs.read(row["filename"])
    except OSError as exc:
        return f"its payload cannot be read from the blob store: {exc}"
    digest = hashlib.sha256(memoryview(data).cast("B")).hexdigest()
    del data
    if row["signature"] is None:
        if enrolment != "open":
            return (
                f"it is unsigned, on a model that requires enrolment ({enrolment!r}); "
                f"its payload's sha256 is {digest}"
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
        row["federated_model"],
        row["base_aggregate"],
        row["num_examples"],
        row["tensor_names"],
        row["sha256"],
    )
    if not verify(public_key, text, signature):
        return (
            f"its signature by key {row['key_id']} does not verify over its stored fields and "
            "digest: the record (client, base_aggregate, num_examples, tensor_names or "
            "digest) was altered"
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
    aggregates = [
        row["id"]
        for row in service.store.all(
            "SELECT id FROM aggregates WHERE federated_model = ? ORDER BY id", (model_id,)
        )
    ]
    inputs: dict[int, list[int]] = {a: [] for a in aggregates}
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
        if row["federated_model"] != model_id:
            problem = f"it averaged update {row['id']} of another model ({row['federated_model']})"
        elif row["status"] != COMPLETE:
            problem = f"it lists update {row['id']}, whose status is {row['status']}, not COMPLETE"
        elif row["id"] in failed:
            problem = f"it averaged update {row['id']}, which fails verification"
        else:
            continue
        problems.append({"aggregate": aggregate, "problem": problem})
    for aggregate, ids in inputs.items():
        if not ids:
            problems.append({"aggregate": aggregate, "problem": "it lists no input updates"})
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
