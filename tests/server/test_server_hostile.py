"""Hostile requests get a JSON 4xx saying what was expected and what arrived, never a 500.

One table per kind: malformed codec tags, JSON nested beyond what the server keeps,
recursive or unresolvable JSON Schemas, ids too long for a path or a query, values of
the wrong JSON type in every field, uploads racing their model's deletion, and
idempotent replays checked as strictly as fresh requests. (A 500 in the server log
fails any test by itself: see tests/conftest.py.)
"""

from __future__ import annotations

import json
import socket
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import requests
from server_helpers import json_error, nested, reason, request

from fma_connect import WebClient, default_codec_registry
from fma_connect.admin import AdminClient
from fma_connect.codecs.base import read_tag
from fma_connect.exceptions import DecodeError
from fma_connect.server.store import Store
from fma_connect.server.testing import RunningServer

API = "/api/v1"
JSON = "application/json"
MSGPACK = "application/vnd.fma-connect.msgpack"
#: Beyond what orjson writes back (254 levels), and beyond Python's recursion limit.
DEPTHS = (300, 1000)
#: The model, its aggregate and its client's first update all have id 1 on a fresh server.
MODEL = AGGREGATE = 1


@pytest.fixture
def client(server: RunningServer, admin: AdminClient) -> WebClient:
    """A client of model 1, which has aggregate 1 (no requirement: every update is a round)."""
    model = admin.create_model("hostile")
    assert model["id"] == MODEL
    web = WebClient(model["id"], url=server.url, retries=0)
    web.register()
    web.send_update([np.ones(2)])
    assert admin.list_aggregates(MODEL)[0]["id"] == AGGREGATE
    return web


def _post(
    server: RunningServer,
    client: WebClient,
    body: bytes,
    *,
    key: str | None = None,
    path: str = "/model_updates/",
    media: str = JSON,
) -> requests.Response:
    headers = {"CLIENT-UUID": client.uuid, "Content-Type": media}
    if key is not None:
        headers["Idempotency-Key"] = key
    return request(server, "POST", API + path, data=body, headers=headers)


def _update(**fields: Any) -> bytes:
    return orjson.dumps({"federated_model": MODEL, "data": [[1.0, 2.0]], **fields})


def _seed(server: RunningServer, client: WebClient, key: str) -> None:
    """Store an update under ``key``, so the next request with it is a replay."""
    stored = _post(server, client, _update(base_aggregate=AGGREGATE, num_examples=1), key=key)
    assert stored.status_code in (200, 201), stored.text  # 200: seeded already


# -- 1. malformed codec tags --------------------------------------------------------------

MALFORMED_TAGS = [
    pytest.param({"codec": 5, "format_version": "x"}, "codec=5", id="int-codec,str-version"),
    pytest.param({"codec": "npz-b64", "format_version": True}, "format_version=true", id="bool"),
    pytest.param({"codec": "npz-b64", "format_version": 1.0}, "format_version=1.0", id="float"),
    pytest.param({"codec": "npz-b64", "format_version": "1"}, "format_version='1'", id="str"),
    pytest.param({"codec": ["npz-b64"], "format_version": 1}, "codec=an array", id="list"),
    pytest.param({"codec": {"a": 1}, "format_version": [1]}, "codec=an object", id="object"),
    pytest.param({"codec": None, "format_version": None}, "codec=null", id="nulls"),
]


@pytest.mark.parametrize("replay", [False, True], ids=["first-sight", "replay"])
@pytest.mark.parametrize(("tag", "arrived"), MALFORMED_TAGS)
def test_a_malformed_codec_tag_gets_400(
    server: RunningServer, client: WebClient, tag: dict[str, Any], arrived: str, replay: bool
) -> None:
    if replay:
        _seed(server, client, "tagged")
    body = orjson.dumps({"federated_model": MODEL, "data": {**tag, "payload": ""}})
    why = reason(_post(server, client, body, key="tagged"), 400, "data")
    assert 'expected "codec" to be a string and "format_version" an integer' in why
    assert arrived in why


@pytest.mark.parametrize(("tag", "arrived"), MALFORMED_TAGS)
def test_read_tag_refuses_a_malformed_tag_with_a_short_decode_error(
    tag: dict[str, Any], arrived: str
) -> None:
    """The client reads tags in answers with it too: a malformed one is a DecodeError."""
    with pytest.raises(DecodeError, match="malformed codec tag") as refused:
        read_tag({**tag, "payload": ""})
    assert arrived in str(refused.value)
    with pytest.raises(DecodeError) as huge:
        read_tag({"codec": "x" * 1_000_000, "format_version": "1", "payload": ""})
    assert len(str(huge.value)) < 200  # what arrived is named, not echoed whole


# -- 2. JSON nested beyond what is kept ------------------------------------------------

TAGGED = b'{"codec": "npz-b64", "format_version": 1, "payload": %s}'
NESTING = [
    # (route, field, the body with %s where the deep value goes): every field kept.
    ("score", "validation_results", b'{"aggregate": 1, "validation_results": %s}'),
    ("model", "update_schema", b'{"name": "m", "update_schema": %s}'),
    ("model", "client_agg_results_schema", b'{"name": "m", "client_agg_results_schema": %s}'),
    ("model", "requirement_args", b'{"name": "m", "requirement_args": %s}'),
    ("model", "clients", b'{"name": "m", "clients": %s}'),
    ("model", "name", b'{"name": %s}'),
    ("model", "initial_model", b'{"name": "m", "initial_model": %s}' % TAGGED),
    ("patch", "update_schema", b'{"update_schema": %s}'),
    ("patch", "aggregator", b'{"aggregator": %s}'),
    ("update", "extra", b'{"federated_model": 1, "data": [[1.0]], "extra": %s}'),
    ("update", "data", b'{"federated_model": 1, "data": %s}' % TAGGED),
    ("replay", "extra", b'{"federated_model": 1, "data": [[1.0]], "extra": %s}'),
    ("replay", "data", b'{"federated_model": 1, "data": %s}' % TAGGED),
]


def _send(server: RunningServer, client: WebClient, route: str, body: bytes) -> requests.Response:
    """POST/PATCH ``body`` to a route: score, model, patch, update or replay (of update 2)."""
    admin = {"Authorization": f"Token {server.admin_token}", "Content-Type": JSON}
    if route == "model":
        return request(server, "POST", f"{API}/models/", data=body, headers=admin)
    if route == "patch":
        return request(server, "PATCH", f"{API}/models/{MODEL}/", data=body, headers=admin)
    if route == "score":
        return _post(server, client, body, path="/client_aggregate_scores/")
    if route == "replay":
        _seed(server, client, "deep")
    return _post(server, client, body, key="deep" if route == "replay" else None)


@pytest.mark.parametrize("objects", [False, True], ids=["arrays", "objects"])
@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize(("route", "field", "template"), NESTING)
def test_json_nested_deeper_than_kept_gets_400(
    server: RunningServer,
    client: WebClient,
    route: str,
    field: str,
    template: bytes,
    depth: int,
    objects: bool,
) -> None:
    response = _send(server, client, route, template % nested(depth, objects=objects))
    assert "Nested deeper than 100 levels" in reason(response, 400, field)


@pytest.mark.parametrize("depth", DEPTHS)
def test_a_replay_with_weights_nested_too_deep_is_another_update(
    server: RunningServer, client: WebClient, depth: int
) -> None:
    """No stored update nests that deep, so the key was used for another one: 422."""
    _seed(server, client, "deep")
    body = b'{"federated_model": 1, "data": %s}' % nested(depth)
    refused = json_error(_post(server, client, body, key="deep"), 422)
    assert "Idempotency-Key 'deep' was already used" in refused["detail"]


# -- 3. JSON Schemas: recursive, unresolvable, malformed -------------------------------

#: Numbers, or arrays of what this schema accepts: any depth, by recursion.
NUMBER_OR_ARRAY = {"anyOf": [{"type": "number"}, {"type": "array", "items": {"$ref": "#/$defs/n"}}]}
RECURSIVE = {"$defs": {"n": NUMBER_OR_ARRAY}, "$ref": "#/$defs/n"}


@pytest.mark.parametrize("depth", [150, 300, 1000])
@pytest.mark.parametrize("field", ["data", "validation_results"])
def test_deep_values_against_a_recursive_schema_get_400(
    server: RunningServer, admin: AdminClient, field: str, depth: int
) -> None:
    model = admin.create_model(
        "recursive", update_schema=RECURSIVE, client_agg_results_schema=RECURSIVE
    )
    client = WebClient(model["id"], url=server.url, retries=0)
    client.register()
    if field == "data":
        body = b'{"federated_model": %d, "data": %s}' % (model["id"], nested(depth, b"1.0"))
        response = _post(server, client, body)
    else:
        client.send_update([np.ones(2)])
        aggregate = admin.list_aggregates(model["id"])[0]["id"]
        body = b'{"aggregate": %d, "validation_results": %s}' % (aggregate, nested(depth))
        response = _post(server, client, body, path="/client_aggregate_scores/")
    assert "Nested deeper than 100 levels" in reason(response, 400, field)
    shallow = b'{"aggregate": 1, "validation_results": %s}' % nested(40)
    if field == "validation_results":  # within the bound, the recursive schema applies
        scored = _post(server, client, shallow, path="/client_aggregate_scores/")
        assert scored.status_code == 201, scored.text


def _deep_items(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "number"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


BAD_SCHEMAS = [
    pytest.param(_deep_items(150), "Nested deeper than 100 levels", id="nested-150"),
    pytest.param(_deep_items(600), "Nested deeper than 100 levels", id="nested-600"),
    pytest.param({"$ref": "#"}, "recurses without end", id="ref-to-itself"),
    pytest.param({"anyOf": [{"$ref": "#"}]}, "recurses without end", id="ref-cycle"),
    pytest.param(
        {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}, "recurses", id="defs-cycle"
    ),
    pytest.param(
        {"$ref": "#/$defs/missing"}, "'#/$defs/missing' (string) does not resolve", id="missing-ref"
    ),
    pytest.param(
        {"items": {"$ref": "other.json"}},
        "'other.json' (string) does not resolve",
        id="relative-ref",
    ),
    pytest.param(
        {"$dynamicRef": "#nowhere"}, "'#nowhere' (string) does not resolve", id="dynamic-ref"
    ),
    pytest.param(
        {"$schema": 5}, "$schema must be a string naming a JSON Schema draft, e.g.", id="schema-int"
    ),
    pytest.param({"$schema": ["a"]}, "got an array of 1 item", id="schema-list"),
    pytest.param({"$schema": {"a": 1}}, "got an object of 1 key", id="schema-object"),
    pytest.param(
        {"$schema": "http://["}, "'http://[' (string) names no draft", id="schema-not-a-uri"
    ),
    pytest.param(
        {"$schema": "https://example.com/s"},
        "names no draft this server knows",
        id="schema-unknown",
    ),
    pytest.param(
        {"items": {"$schema": "http://["}}, "names no draft", id="nested-schema-not-a-uri"
    ),
    pytest.param("object", "Expected a JSON Schema (an object) or null, got 'object'", id="str"),
]


@pytest.mark.parametrize("field", ["update_schema", "client_agg_results_schema"])
@pytest.mark.parametrize(("schema", "why"), BAD_SCHEMAS)
def test_a_schema_that_cannot_be_applied_is_refused_at_model_creation(
    server: RunningServer, client: WebClient, field: str, schema: Any, why: str
) -> None:
    body = json.dumps({"name": "bad-schema", field: schema})  # orjson writes 254 levels at most
    created = request(
        server, "POST", f"{API}/models/", admin=True, data=body, headers={"Content-Type": JSON}
    )
    assert why in reason(created, 400, field)
    patched = request(
        server,
        "PATCH",
        f"{API}/models/{MODEL}/",
        admin=True,
        data=body,
        headers={"Content-Type": JSON},
    )
    assert why in reason(patched, 400, field)


@pytest.fixture
def listener() -> Iterator[tuple[str, Callable[[], int]]]:
    """A TCP listener on 127.0.0.1, and how many connections it has received."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        sock.settimeout(0.3)
        accepted: list[socket.socket] = []

        def connections() -> int:
            while True:
                try:
                    accepted.append(sock.accept()[0])
                except TimeoutError:
                    return len(accepted)

        yield f"http://127.0.0.1:{sock.getsockname()[1]}", connections
        for conn in accepted:
            conn.close()


@pytest.mark.parametrize("scheme", ["http", "file"])
def test_a_remote_ref_is_refused_and_never_fetched(
    server: RunningServer,
    client: WebClient,
    data_dir: Path,
    listener: tuple[str, Callable[[], int]],
    scheme: str,
) -> None:
    """jsonschema would open the URL (any scheme urllib knows) from inside a request."""
    url, connections = listener
    target = f"{url}/schema.json" if scheme == "http" else "file:///etc/hostname"
    schema = {"type": "array", "items": {"$ref": target}}
    body = {"name": "remote", "update_schema": schema}
    created = request(server, "POST", f"{API}/models/", admin=True, json=body)
    why = reason(created, 400, "update_schema")
    assert f"$ref '{target}' (string) does not resolve" in why
    assert "never fetches remote schemas" in why
    # A schema stored before models were checked for this (written here into the
    # database) is applied without a fetch too: the update is refused, nobody connects.
    with sqlite3.connect(data_dir / "fma.sqlite3") as db:
        db.execute(
            "UPDATE models SET update_schema = ? WHERE id = ?", (orjson.dumps(schema), MODEL)
        )
    why = reason(_post(server, client, _update()), 400, "data")
    assert "The model's schema cannot be applied: a $ref does not resolve" in why
    assert connections() == 0


def test_a_valid_recursive_schema_still_checks_values(
    server: RunningServer, admin: AdminClient
) -> None:
    model = admin.create_model("ok", update_schema=RECURSIVE)
    client = WebClient(model["id"], url=server.url, retries=0)
    client.register()
    assert client.send_update([np.ones((2, 3))])["status"] == 2
    refused = _post(server, client, b'{"federated_model": %d, "data": [["x"]]}' % model["id"])
    assert "Does not match the model's schema" in reason(refused, 400, "data")


# -- 4. ids too long for a path, or beyond 64 bits -------------------------------------

ID_ROUTES = [
    ("GET", "/models/{}/"),
    ("PATCH", "/models/{}/"),
    ("DELETE", "/models/{}/"),
    ("POST", "/models/{}/register_client/"),
    ("GET", "/models/{}/get_latest_aggregate/"),
    ("GET", "/models/{}/get_latest_model/"),
    ("GET", "/models/{}/get_current_artifact/"),
    ("POST", "/models/{}/aggregate/"),
    ("GET", "/model_updates/{}/"),
    ("GET", "/model_updates/{}/data/"),
    ("GET", "/model_aggregates/{}/"),
    ("GET", "/model_aggregates/{}/result/"),
    ("POST", "/model_aggregates/{}/publish_aggregate/"),
    ("GET", "/model_artifacts/{}/"),
    ("GET", "/model_artifacts/{}/values/"),
    ("GET", "/client_aggregate_scores/{}/"),
]
#: More digits than int() reads by default, and more than a 64-bit id has.
LONG_IDS = ("1" * 5000, "9" * 20)


@pytest.mark.parametrize(("method", "path"), ID_ROUTES)
def test_a_path_id_too_long_for_an_id_is_404_whoever_asks(
    server: RunningServer, client: WebClient, method: str, path: str
) -> None:
    credentials = [
        {},
        {"Authorization": f"Token {server.admin_token}"},
        {"CLIENT-UUID": client.uuid},
    ]
    for number in LONG_IDS:
        for headers in credentials:
            answer = request(
                server,
                method,
                API + path.format(number),
                headers={**headers, "Content-Type": JSON},
                data=b'{"version": "1"}',
            )
            assert json_error(answer, 404) == {"detail": "Not found."}, (number[:5], headers)


@pytest.mark.parametrize(("method", "path"), ID_ROUTES)
def test_a_path_id_beyond_int64_is_404_for_the_admin(
    server: RunningServer, client: WebClient, method: str, path: str
) -> None:
    url = API + path.format(2**63)  # 19 digits: a route matches, no row does
    answer = request(server, method, url, admin=True, json={"version": "1"})
    assert "Not found" in json_error(answer, 404)["detail"]


QUERY_IDS = [
    ("models/?page={}", 404, "detail", "Invalid page."),
    ("model_updates/?page={}", 404, "detail", "Invalid page."),
    ("model_updates/?page=2&page_size={}", 404, "detail", "Invalid page."),
    ("model_updates/?federated_model={}", 400, "federated_model", "A valid integer is required"),
    ("model_updates/?status={}", 400, "status", "A valid integer is required"),
    ("model_aggregates/?federated_model={}", 400, "federated_model", "A valid integer is required"),
    ("model_artifacts/?federated_model={}", 400, "federated_model", "A valid integer is required"),
    ("client_aggregate_scores/?aggregate={}", 400, "aggregate", "A valid integer is required"),
]


@pytest.mark.parametrize(("query", "status", "field", "why"), QUERY_IDS)
def test_a_query_id_of_thousands_of_digits_is_a_4xx(
    server: RunningServer, query: str, status: int, field: str, why: str
) -> None:
    answer = request(server, "GET", f"{API}/{query.format('1' * 5000)}", admin=True)
    assert why in reason(answer, status, field)


def _msgpack() -> bytes:
    codec = default_codec_registry().get("msgpack")
    return b"".join(bytes(chunk) for chunk in codec.encode([("0", np.ones(2))]))


BINARY_QUERIES = [
    ("federated_model={}", "federated_model", "A valid integer is required, got '1111"),
    ("federated_model=1&base_aggregate={}", "base_aggregate", "A valid integer is required"),
    ("federated_model=1&num_examples={}", "num_examples", "A valid integer is required"),
]


@pytest.mark.parametrize("replay", [False, True], ids=["fresh", "replay"])
@pytest.mark.parametrize(("query", "field", "why"), BINARY_QUERIES)
def test_binary_upload_query_ids_of_thousands_of_digits_get_400(
    server: RunningServer, client: WebClient, query: str, field: str, why: str, replay: bool
) -> None:
    if replay:
        _seed(server, client, "binary")
    path = f"/model_updates/?{query.format('1' * 5000)}"
    answer = _post(server, client, _msgpack(), path=path, media=MSGPACK, key="binary")
    assert why in reason(answer, 400, field)


# -- 5. the wrong JSON type in every field ---------------------------------------------

WRONG_TYPES = [
    # (route, field, value, what the message names as arrived)
    ("update", "federated_model", "1", "'1' (string)"),
    ("update", "federated_model", True, "true"),
    ("update", "federated_model", 1.5, "1.5 (number)"),
    ("update", "federated_model", [1], "an array of 1 item"),
    ("update", "federated_model", {"id": 1}, "an object of 1 key"),
    ("update", "base_aggregate", "1", "'1' (string)"),
    ("update", "base_aggregate", True, "true"),
    ("update", "num_examples", "1", "'1' (string)"),
    ("update", "num_examples", True, "true"),
    ("update", "num_examples", 1.0, "1.0 (number)"),
    ("update", "num_examples", 2**63, "9223372036854775808 (integer)"),
    ("update", "data", None, "This field may not be null"),
    ("score", "aggregate", "1", "'1' (string)"),
    ("score", "aggregate", False, "false"),
    ("score", "aggregate", [1], "an array of 1 item"),
    ("score", "client", 5, "5 (integer)"),
    ("score", "client", ["x"], "an array of 1 item"),
    ("model", "developer", "1", "'1' (string)"),
    ("model", "developer", True, "true"),
    ("model", "aggregator", ["fed_avg"], "an array of 1 item is not a valid choice"),
    ("model", "aggregator", {"a": 1}, "an object of 1 key is not a valid choice"),
    ("model", "aggregator", 5, "5 (integer) is not a valid choice"),
    ("model", "requirement", ["all_clients"], "an array of 1 item is not a valid choice"),
    ("model", "requirement", {"a": 1}, "an object of 1 key is not a valid choice"),
    ("model", "requirement_args", "ab", "got 'ab' (string)"),
    ("model", "requirement_args", {"a": 1}, "got an object of 1 key"),
    ("model", "requirement_args", [1, 2], "got an array of 2 items"),
    ("model", "allow_aggregation", "true", "got 'true' (string)"),
    ("model", "allow_aggregation", 1, "got 1 (integer)"),
    ("model", "name", 5, "got 5 (integer)"),
    ("model", "name", ["m"], "got an array of 1 item"),
    ("model", "furthest_base_agg", "1", "got '1' (string)"),
    ("model", "furthest_base_agg", 2**63, "got 9223372036854775808 (integer)"),
    ("model", "clients", "abc", "got 'abc' (string)"),
    ("model", "clients", [5], "5 (integer) is not a valid UUID"),
    ("model", "clients", [None], "null is not a valid UUID"),
    ("model", "clients", [{"a": 1}], "an object of 1 key is not a valid UUID"),
    ("model", "update_schema", 5, "got 5 (integer)"),
    ("patch", "aggregator", ["fed_avg"], "an array of 1 item is not a valid choice"),
    ("patch", "requirement", {"a": 1}, "an object of 1 key is not a valid choice"),
    ("patch", "developer", "1", "'1' (string)"),
    ("publish", "version", 5, "got 5 (integer)"),
    ("publish", "version", True, "got true"),
    ("publish", "version", ["1.0"], "got an array of 1 item"),
]
EXPECTED = ("Expected", "expected", "not a valid", "Incorrect type", "Must be", "may not be")


@pytest.mark.parametrize(("route", "field", "value", "arrived"), WRONG_TYPES)
def test_a_value_of_the_wrong_type_gets_400_naming_it(
    server: RunningServer, client: WebClient, route: str, field: str, value: Any, arrived: str
) -> None:
    bodies = {
        "update": {"federated_model": MODEL, "data": [[1.0, 2.0]], field: value},
        "score": {"aggregate": AGGREGATE, "validation_results": {"acc": 1}, field: value},
        "model": {"name": "typed", field: value},
        "patch": {field: value},
        "publish": {field: value},
    }
    body = orjson.dumps(bodies[route])
    if route == "publish":
        path = f"{API}/model_aggregates/{AGGREGATE}/publish_aggregate/"
        answer = request(
            server, "POST", path, admin=True, data=body, headers={"Content-Type": JSON}
        )
    else:
        answer = _send(server, client, route, body)
    why = reason(answer, 400, field)
    assert arrived in why
    assert any(word in why for word in EXPECTED), why


TOP_LEVEL = [b"[]", b"[1, 2]", b"1", b'"text"', b"null", b"true"]
JSON_ROUTES = ["update", "replay", "score", "model", "patch", "publish"]


@pytest.mark.parametrize("route", JSON_ROUTES)
def test_a_json_body_that_is_not_an_object_gets_400(
    server: RunningServer, client: WebClient, route: str
) -> None:
    for body in TOP_LEVEL:
        if route == "publish":
            path = f"{API}/model_aggregates/{AGGREGATE}/publish_aggregate/"
            headers = {"Content-Type": JSON}
            answer = request(server, "POST", path, admin=True, data=body, headers=headers)
        else:
            answer = _send(server, client, route, body)
        why = reason(answer, 400, "non_field_errors")
        assert f"Expected a dictionary, but got {type(orjson.loads(body)).__name__}" in why


# -- 6. uploads, scores, rounds racing their model's deletion --------------------------


def _deleting_first(method: Callable[..., Any], model_of: Callable[..., int]) -> Any:
    """``method``, run just after an admin's DELETE of the model it writes for."""

    def racing(self: Store, *args: Any, **kwargs: Any) -> Any:
        self.delete_model(model_of(self, *args))
        return method(self, *args, **kwargs)

    return racing


@pytest.mark.parametrize("media", [JSON, MSGPACK])
def test_an_update_racing_its_models_deletion_gets_400_naming_the_model(
    server: RunningServer, client: WebClient, monkeypatch: pytest.MonkeyPatch, media: str
) -> None:
    racing = _deleting_first(
        Store.insert_update, lambda store, fields, *_: fields["federated_model"]
    )
    monkeypatch.setattr(Store, "insert_update", racing)
    if media == JSON:
        answer = _post(server, client, _update())
    else:
        answer = _post(
            server, client, _msgpack(), path="/model_updates/?federated_model=1", media=MSGPACK
        )
    why = reason(answer, 400, "federated_model")
    assert why == 'Invalid pk "1" - object does not exist (it was deleted).'


def test_a_registration_racing_the_models_deletion_gets_404(
    server: RunningServer, client: WebClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    racing = _deleting_first(Store.register_client, lambda store, model_id, *_: model_id)
    monkeypatch.setattr(Store, "register_client", racing)
    answer = request(server, "POST", f"{API}/models/{MODEL}/register_client/")
    assert json_error(answer, 404) == {"detail": "Not found."}


def test_a_publication_racing_the_models_deletion_gets_404(
    server: RunningServer, client: WebClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    racing = _deleting_first(
        Store.publish, lambda store, aggregate, *_: aggregate["federated_model"]
    )
    monkeypatch.setattr(Store, "publish", racing)
    path = f"{API}/model_aggregates/{AGGREGATE}/publish_aggregate/"
    answer = request(server, "POST", path, admin=True, json={"version": "1.0"})
    assert json_error(answer, 404) == {"detail": "Not found."}


def test_a_score_racing_the_models_deletion_gets_400_naming_the_aggregate(
    server: RunningServer, client: WebClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    racing = _deleting_first(
        Store.insert_score,
        lambda store, aggregate_id, *_: store.get_aggregate(aggregate_id)["federated_model"],
    )
    monkeypatch.setattr(Store, "insert_score", racing)
    body = orjson.dumps({"aggregate": AGGREGATE, "validation_results": {"acc": 1}})
    why = reason(_post(server, client, body, path="/client_aggregate_scores/"), 400, "aggregate")
    assert why == 'Invalid pk "1" - object does not exist (it was deleted).'


def test_a_round_racing_the_models_deletion_gets_404(
    server: RunningServer, admin: AdminClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = admin.create_model("round", requirement="require_x_updates", requirement_args=[5])
    WebClient(model["id"], url=server.url, retries=0).send_update([np.ones(2)])
    racing = _deleting_first(Store.record_round, lambda store, model_id, *_: model_id)
    monkeypatch.setattr(Store, "record_round", racing)
    answer = request(server, "POST", f"{API}/models/{model['id']}/aggregate/", admin=True)
    assert json_error(answer, 404) == {"detail": "Not found."}


# -- 7. a replay is checked as strictly as a fresh request ----------------------------

REPLAYED_FIELDS = [
    # Each compares equal to the stored 1 (True == 1 == 1.0), and a fresh request refuses it.
    ("num_examples", 1.0),
    ("num_examples", True),
    ("num_examples", "1"),
    ("base_aggregate", 1.0),
    ("base_aggregate", True),
    ("base_aggregate", "1"),
    ("federated_model", 1.0),
    ("federated_model", True),
    ("federated_model", "1"),
]


@pytest.mark.parametrize(("field", "value"), REPLAYED_FIELDS)
def test_a_json_replay_gets_the_answer_a_fresh_request_gets(
    server: RunningServer, client: WebClient, field: str, value: Any
) -> None:
    _seed(server, client, "strict")
    body = _update(**{"base_aggregate": AGGREGATE, "num_examples": 1, field: value})
    fresh = _post(server, client, body)
    replayed = _post(server, client, body, key="strict")
    assert field in json_error(fresh, 400)
    assert (replayed.status_code, replayed.json()) == (400, fresh.json())


REPLAYED_QUERIES = [
    # What int() reads as 1 but is no plain integer, in the query of a binary update.
    ("num_examples", "1.0"),
    ("num_examples", "%2B1"),  # +1
    ("num_examples", "%D9%A1"),  # ARABIC-INDIC DIGIT ONE
    ("base_aggregate", "0_1"),
    ("federated_model", "%EF%BC%91"),  # FULLWIDTH DIGIT ONE
]


@pytest.mark.parametrize(("field", "value"), REPLAYED_QUERIES)
def test_a_binary_replay_gets_the_answer_a_fresh_request_gets(
    server: RunningServer, client: WebClient, field: str, value: str
) -> None:
    fields = {"federated_model": "1", "base_aggregate": "1", "num_examples": "1"}
    seed = "&".join(f"{k}={v}" for k, v in fields.items())
    stored = _post(
        server, client, _msgpack(), path=f"/model_updates/?{seed}", media=MSGPACK, key="q"
    )
    assert stored.status_code == 201, stored.text
    query = "&".join(f"{k}={value if k == field else v}" for k, v in fields.items())
    path = f"/model_updates/?{query}"
    fresh = _post(server, client, _msgpack(), path=path, media=MSGPACK)
    replayed = _post(server, client, _msgpack(), path=path, media=MSGPACK, key="q")
    assert "A valid integer is required" in reason(fresh, 400, field)
    assert (replayed.status_code, replayed.json()) == (400, fresh.json())


def test_a_true_replay_still_gets_the_original(server: RunningServer, client: WebClient) -> None:
    _seed(server, client, "same")
    again = _post(server, client, _update(base_aggregate=AGGREGATE, num_examples=1), key="same")
    assert again.status_code == 200, again.text
