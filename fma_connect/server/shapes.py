"""The JSON objects the API answers with, built from store rows.

Field names and order follow the stock service; fields it lacks are extensions
(an update's ``status``, ``status_reason``, ``num_examples`` and ``codec``; an
aggregate's ``aggregator`` and ``updates``...). Weights are never inline here: they
are site-relative URLs (see :func:`weights_url`), served by the blob routes.
"""

from __future__ import annotations

from typing import Any

from .store_core import Row

__all__ = [
    "aggregate_json",
    "artifact_json",
    "model_json",
    "score_json",
    "update_json",
    "weights_url",
]

API = "/api/v1/"
#: kind -> (collection, weights sub-path) of the URL that serves a row's weights.
_WEIGHTS = {
    "update": ("model_updates", "data"),
    "aggregate": ("model_aggregates", "result"),
    "artifact": ("model_artifacts", "values"),
}


def weights_url(kind: str, row_id: int) -> str:
    """Return the site-relative URL of the weights of an update, aggregate or artifact."""
    collection, leaf = _WEIGHTS[kind]
    return f"{API}{collection}/{row_id}/{leaf}/"


def model_json(row: Row, clients: list[str]) -> dict[str, Any]:
    """A FederatedModel."""
    return {
        "id": row["id"],
        "allow_aggregation": bool(row["allow_aggregation"]),
        "aggregator": row["aggregator"],
        "requirement": row["requirement"],
        "name": row["name"],
        "requirement_args": row["requirement_args"],
        "update_schema": row["update_schema"],
        "client_agg_results_schema": row["client_agg_results_schema"],
        "furthest_base_agg": row["furthest_base_agg"],
        "aggregate_fraction": row["aggregate_fraction"],
        "aggregate_values": row["aggregate_values"],
        "round_deadline": row["round_deadline"],
        "round_quorum": row["round_quorum"],
        "min_clients": row["min_clients"],
        "drop_after_missed": row["drop_after_missed"],
        "enrolment": row.get("enrolment") or "open",
        "created_on": row["created_on"],
        "last_modified": row["last_modified"],
        "developer": row["developer"],
        "current_artifact": row["current_artifact"],
        "clients": clients,
    }


def update_json(row: Row) -> dict[str, Any]:
    """A ModelUpdate; ``data`` is the URL of its weights."""
    return {
        "id": row["id"],
        "data": weights_url("update", row["id"]),
        "created_on": row["created_on"],
        "client": row["client"],
        "federated_model": row["federated_model"],
        "base_aggregate": row["base_aggregate"],
        "status": row["status"],
        "status_reason": row["status_reason"],
        "num_examples": row["num_examples"],
        "codec": row["codec"],
        "applied_aggregate": row["applied_aggregate"],
    }


def aggregate_json(row: Row) -> dict[str, Any]:
    """A ModelAggregate; ``result`` is the URL of its weights."""
    return {
        "id": row["id"],
        "result": weights_url("aggregate", row["id"]),
        "validation_score": row["validation_score"],
        "created_on": row["created_on"],
        "federated_model": row["federated_model"],
        "parent": row["parent"],
        "aggregator": row["aggregator"],
    }


def artifact_json(row: Row) -> dict[str, Any]:
    """A ModelArtifact; ``values`` is the URL of its weights."""
    return {
        "id": row["id"],
        "values": weights_url("artifact", row["id"]),
        "version": row["version"],
        "created_on": row["created_on"],
        "federated_model": row["federated_model"],
        "aggregate": row["aggregate"],
    }


def score_json(row: Row) -> dict[str, Any]:
    """A ClientAggregateScore."""
    return {
        "id": row["id"],
        "validation_results": row["validation_results"],
        "created_on": row["created_on"],
        "aggregate": row["aggregate"],
        "client": row["client"],
    }
