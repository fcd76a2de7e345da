"""WebClient against mocked HTTP (responses): URLs, headers, bodies per codec, errors."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pytest
import requests
import responses
from requests.adapters import HTTPAdapter
from responses import matchers

from fma_connect import (
    APIError,
    APIException,
    CodecRegistry,
    ConfigurationError,
    ConnectError,
    DecodeError,
    EncodeError,
    RequestTimeout,
    TokenAuth,
    WebClient,
    settings,
)

BASE = "http://fma.test"
API = f"{BASE}/api/v1"
UUID = "7f2a3c1e-0000-4000-8000-000000000001"
WEIGHTS: dict[str, np.ndarray] = {
    "dense": np.arange(6, dtype=np.float32).reshape(2, 3) / 10,
    "bias": np.array([1, 2], np.int8),
}


def client(registry: CodecRegistry, codec: str = "json", **options: Any) -> WebClient:
    return WebClient(7, UUID, BASE, codec=codec, registry=registry, retries=0, **options)


def body_of(call: Any) -> Any:
    return orjson.loads(call.request.body)


def binary_body(call: Any) -> bytearray:
    body = bytearray()
    for chunk in call.request.body:
        body += chunk
    return body


# -- register / uuid ----------------------------------------------------------------


@responses.activate
def test_register_posts_without_a_uuid_and_keeps_the_one_returned(registry: CodecRegistry) -> None:
    responses.post(f"{API}/models/7/register_client/", json={"uuid": UUID})
    fresh = WebClient(7, url=BASE, registry=registry)
    assert fresh.uuid == UUID  # registers lazily
    assert "CLIENT-UUID" not in responses.calls[0].request.headers
    assert fresh.register() == UUID
    assert responses.calls[1].request.headers["CLIENT-UUID"] == UUID


@responses.activate
def test_register_failure_keeps_the_seed_message_format(registry: CodecRegistry) -> None:
    responses.post(f"{API}/models/7/register_client/", status=403, json={"detail": "Invalid UUID"})
    with pytest.raises(APIException) as err:
        client(registry).register()
    message = str(err.value)
    assert message.startswith("An API error occurred (status_code=403): {'detail': 'Invalid UUID'}")
    assert "does not know client" in message and "without uuid=" in message
    assert err.value.status_code == 403


def test_seed_properties(registry: CodecRegistry) -> None:
    c = client(registry)
    assert (c.uuid, c.url, c.federated_model_id, c.codec.name) == (UUID, BASE, 7, "json")


def test_default_url_is_the_settings_string_as_in_the_original_client(
    registry: CodecRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert WebClient(1, registry=registry).url == "http://127.0.0.1:8000/"
    monkeypatch.setattr(settings, "default_url", "http://elsewhere:9000/")
    assert WebClient(1, registry=registry).url == "http://elsewhere:9000/"


def test_default_url_can_come_from_the_environment() -> None:
    code = "import fma_connect.settings as s; print(s.default_url)"
    env = {**os.environ, "FMA_CONNECT_URL": "http://fma.internal:8000/"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "http://fma.internal:8000/"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"url": "127.0.0.1:8000"}, "url must look like http://host:port"),
        ({"url": ""}, "url must look like"),
        ({"url": "ftp://host/"}, "url must look like"),
        (
            {"uuid": 12345},
            "uuid must be a UUID string such as '.*' \\(or None to register\\), got 12345",
        ),
        ({"uuid": "abc\ndef"}, "uuid must be a UUID string"),
        ({"uuid": "xyz"}, "uuid must be a UUID string such as '[0-9a-f-]{36}' .*, got 'xyz'$"),
        ({"uuid": f" {UUID}"}, "uuid must be a UUID string"),
        ({"uuid": UUID.replace("-", "_", 1).replace("-", "")}, "uuid must be a UUID string"),
        ({"progress": 5}, "progress must be a callable progress\\(bytes_done, .*got 5"),
        ({"upload_in_flight": 0}, "upload_in_flight must be an integer from 1 to 16, got 0"),
        ({"upload_in_flight": 2.0}, "upload_in_flight must be an integer from 1 to 16, got 2.0"),
        ({"registry": "json"}, "registry must be a CodecRegistry .*got 'json'"),
        ({"retry_updates": "no"}, "retry_updates must be True or False, got 'no'"),
        ({"session": "http://proxy"}, "session must be a requests.Session .*got 'http://proxy'"),
        ({"headers": {"X-Trace": 1}}, "headers must be a mapping of header names to str values"),
        ({"headers": ["X-Trace"]}, "headers must be a mapping"),
        ({"auth": 42}, "auth must be a requests auth .*got int 42"),
        ({"auth": ("user",)}, "auth must be a requests auth"),
        ({"url": "http://h:8000/api/v1/"}, "url must be the service root.*'http://h:8000/'"),
        ({"url": "http://h:8000/api/v1"}, "url must be the service root.*'http://h:8000/'"),
        ({"url": "https://h/fma/api/v1/"}, "url must be the service root.*'https://h/fma/'"),
        ({"codec": 42}, "codec must be a codec name \\(delta, json, msgpack, npz-b64, sparse\\)"),
        ({"timeout": -1}, "timeout must be seconds > 0"),
        ({"timeout": (1, 2, 3)}, "timeout must be"),
        ({"retries": -1}, "retries must be an integer >= 0"),
    ],
)
def test_malformed_options_are_refused_at_construction(
    registry: CodecRegistry, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        WebClient(1, **{"url": BASE, "registry": registry, **options})


def test_a_uuid_is_kept_as_given_and_a_uuid_object_as_its_string(
    registry: CodecRegistry,
) -> None:
    import uuid

    upper = UUID.upper()
    assert WebClient(1, upper, BASE, registry=registry).uuid == upper
    assert WebClient(1, uuid.UUID(UUID), BASE, registry=registry).uuid == UUID


def test_a_secret_given_as_auth_is_not_shown_in_the_error(registry: CodecRegistry) -> None:
    with pytest.raises(ConfigurationError, match="got str <hidden>") as err:
        WebClient(1, UUID, BASE, registry=registry, auth="s3cret")
    assert "s3cret" not in str(err.value)


@responses.activate
def test_a_service_under_a_prefix_is_reached_under_it(registry: CodecRegistry) -> None:
    responses.post(f"{BASE}/fma/api/v1/models/7/register_client/", json={"uuid": UUID})
    assert WebClient(7, url=f"{BASE}/fma/", registry=registry, retries=0).register() == UUID


@pytest.mark.parametrize("method", ["check_for_latest_model", "check_for_new_model_aggregate"])
@pytest.mark.parametrize("update_after", ["1", True, 1.0])
@responses.activate
def test_update_after_must_be_an_int(
    registry: CodecRegistry, method: str, update_after: object
) -> None:
    with pytest.raises(ConfigurationError) as err:
        getattr(client(registry), method)(update_after=update_after)
    assert str(err.value) == (
        "update_after must be an aggregate id (an int) or None for the last one this client "
        f"saw, got {update_after!r}"
    )
    assert not responses.calls  # refused before asking the service


@responses.activate
def test_update_after_may_be_a_numpy_integer(registry: CodecRegistry) -> None:
    responses.get(f"{API}/models/7/get_latest_model/", json={"values": [[1.0]], "aggregate": 3})
    assert client(registry).check_for_latest_model(update_after=np.int64(3)) is None


# -- send_update per codec ----------------------------------------------------------


@responses.activate
def test_json_update_is_plain_lists_with_the_seed_fields(registry: CodecRegistry) -> None:
    responses.post(f"{API}/model_updates/", status=201, json={"id": 1, "data": "/media/1.json"})
    answer = client(registry).send_update(WEIGHTS, base_aggregate=3, num_examples=50)
    assert answer == {"id": 1, "data": "/media/1.json"}
    call = responses.calls[0]
    assert call.request.headers["CLIENT-UUID"] == UUID
    assert call.request.headers["Content-Type"] == "application/json"
    assert call.request.headers["Idempotency-Key"]
    assert body_of(call) == {
        "federated_model": 7,
        "base_aggregate": 3,
        "num_examples": 50,
        # A dict's tensors go in sorted key order, with their names beside them.
        "data": [[1, 2], [[0.0, 0.1, 0.2], [0.3, 0.4, 0.5]]],
        "tensor_names": ["bias", "dense"],
    }


@responses.activate
def test_seed_style_list_of_tolist_layers_goes_out_unchanged(registry: CodecRegistry) -> None:
    responses.post(f"{API}/model_updates/", status=201, json={"id": 1})
    layers = [[[0.5, 1.5], [2.5, 3.5]], [0.25, 0.75]]
    client(registry).send_update(layers)
    assert body_of(responses.calls[0]) == {
        "federated_model": 7,
        "base_aggregate": None,
        "data": layers,
    }


@responses.activate
def test_msgpack_update_is_a_binary_body_with_fields_in_the_query(registry: CodecRegistry) -> None:
    responses.post(
        f"{API}/model_updates/",
        status=201,
        json={"id": 2},
        match=[matchers.query_param_matcher({"federated_model": "7", "base_aggregate": "4"})],
    )
    client(registry, "msgpack").send_update(WEIGHTS, base_aggregate=4)
    call = responses.calls[0]
    assert call.request.headers["Content-Type"] == "application/vnd.fma-connect.msgpack"
    body = binary_body(call)
    assert int(call.request.headers["Content-Length"]) == len(body)
    decoded = dict(registry.get("msgpack").decode(body))
    assert decoded["dense"].tobytes() == WEIGHTS["dense"].tobytes()
    assert decoded["bias"].dtype == np.int8


@responses.activate
def test_npz_b64_update_is_a_tagged_object_in_the_json_data_field(registry: CodecRegistry) -> None:
    responses.post(f"{API}/model_updates/", status=201, json={"id": 3})
    client(registry, "npz-b64").send_update(WEIGHTS)
    data = body_of(responses.calls[0])["data"]
    assert data["codec"] == "npz-b64"
    decoded = dict(registry.get("npz-b64").decode(data))
    assert decoded["dense"].tobytes() == WEIGHTS["dense"].tobytes()


@responses.activate
def test_a_415_tells_which_codecs_a_json_only_service_accepts(registry: CodecRegistry) -> None:
    responses.post(
        f"{API}/model_updates/",
        status=415,
        json={"detail": 'Unsupported media type "application/vnd.fma-connect.msgpack" in request.'},
    )
    with pytest.raises(APIException, match="status_code=415.*JSON-native codecs: json, npz-b64"):
        client(registry, "msgpack").send_update(WEIGHTS)


@responses.activate
def test_a_415_from_a_server_lacking_the_codec_plugin_says_to_install_it_there(
    registry: CodecRegistry,
) -> None:
    accepted = ["application/json", "application/vnd.fma-connect.msgpack"]
    responses.post(
        f"{API}/model_updates/",
        status=415,
        json={
            "detail": 'Unsupported media type "application/x-zstd" in request.',
            "accepted": accepted,
        },
    )
    with pytest.raises(APIException) as refused:
        client(registry, "msgpack").send_update(WEIGHTS)
    message = str(refused.value)
    assert "does not have the 'msgpack' codec" in message
    assert "Install the plugin" in message and "application/vnd.fma-connect.msgpack" in message
    assert "JSON-only" not in message


@responses.activate
@pytest.mark.parametrize(
    ("status", "detail", "hint"),
    [
        (401, "Invalid UUID", "create the WebClient without uuid="),
        (403, f"Client {UUID} is not registered with federated model 7.", "call register() first"),
    ],
)
def test_an_unknown_or_unregistered_client_is_told_what_to_do(
    registry: CodecRegistry, status: int, detail: str, hint: str
) -> None:
    responses.get(f"{API}/models/7/get_latest_model/", status=status, json={"detail": detail})
    with pytest.raises(APIException) as refused:
        client(registry).check_for_latest_model()
    assert refused.value.status_code == status
    assert hint in str(refused.value) and detail in str(refused.value)


@responses.activate
def test_repr_names_the_client_without_registering_or_showing_the_whole_uuid(
    registry: CodecRegistry,
) -> None:
    fresh = WebClient(7, url=BASE, registry=registry, codec="msgpack")
    assert repr(fresh) == (
        "WebClient(federated_model_id=7, url='http://fma.test', codec='msgpack', uuid=unregistered)"
    )
    assert repr(client(registry)).endswith("uuid='7f2a3c1e...')")
    assert not responses.calls


# -- reading weights back -----------------------------------------------------------


@responses.activate
def test_latest_model_restores_json_values_to_the_sent_dtypes_and_names(
    registry: CodecRegistry,
) -> None:
    responses.post(f"{API}/model_updates/", status=201, json={"id": 1})
    averaged = [[1.0, 2.0], [[0.0, 0.1, 0.2], [0.3, 0.4, 0.5]]]  # in the sent (sorted) order
    responses.get(f"{API}/models/7/get_latest_model/", json={"values": averaged, "aggregate": 5})
    c = client(registry)
    c.send_update(WEIGHTS)
    latest = c.check_for_latest_model()
    # Named weights are asked for with their names where the service can send them.
    accept = responses.calls[1].request.headers["Accept"]
    assert accept == "application/json; codec=npz-b64, application/json;q=0.9"
    assert latest is not None and latest["aggregate"] == 5
    assert latest["values"]["dense"].dtype == np.float32
    assert latest["values"]["dense"].tobytes() == WEIGHTS["dense"].tobytes()
    assert latest["values"]["bias"].dtype == np.int8
    assert c.check_for_latest_model() is None  # aggregate 5 already seen
    assert c.check_for_latest_model(update_after=4) is not None


@responses.activate
def test_without_a_spec_json_values_are_returned_as_the_service_sent_them(
    registry: CodecRegistry,
) -> None:
    responses.get(
        f"{API}/models/7/get_latest_model/", json={"values": [[1.0, 2.0]], "aggregate": None}
    )
    c = client(registry)
    assert c.check_for_latest_model() == {"values": [[1.0, 2.0]], "aggregate": None}
    # As in the original client, the artifact counts as aggregate -1: handed over once.
    assert c.check_for_latest_model() is None
    assert c.check_for_latest_model(update_after=-2) is not None


@responses.activate
def test_latest_model_in_a_binary_codec_reads_its_fields_from_the_meta_header(
    registry: CodecRegistry,
) -> None:
    body = b"".join(
        bytes(c) for c in registry.get("msgpack").encode([("w", np.ones(3, np.float16))])
    )
    responses.get(
        f"{API}/models/7/get_latest_model/",
        body=body,
        content_type="application/vnd.fma-connect.msgpack",
        headers={"FMA-Meta": '{"aggregate": 9}'},
    )
    c = client(registry, "msgpack")
    latest = c.check_for_latest_model()
    assert latest is not None and latest["aggregate"] == 9
    assert latest["values"]["w"].dtype == np.float16 and latest["values"]["w"].flags.writeable
    accept = responses.calls[0].request.headers["Accept"]
    assert accept == "application/vnd.fma-connect.msgpack, application/json;q=0.9"


@responses.activate
def test_like_template_restores_into_its_structure(registry: CodecRegistry) -> None:
    responses.get(
        f"{API}/models/7/get_latest_model/", json={"values": [[1.0, 2.0], [3.0]], "aggregate": 1}
    )
    like = {"a": np.zeros(2, np.float16), "b": np.zeros(1, np.float32)}
    latest = client(registry).check_for_latest_model(like=like)
    assert latest is not None
    assert latest["values"]["a"].dtype == np.float16 and latest["values"]["b"].tolist() == [3.0]


@responses.activate
def test_new_aggregate_downloads_the_result_url_and_honours_update_after(
    registry: CodecRegistry,
) -> None:
    agg = {
        "id": 4,
        "result": "/media/aggregates/4.json",
        "validation_score": None,
        "federated_model": 7,
    }
    responses.get(f"{API}/models/7/get_latest_aggregate/", json=agg)
    responses.get(
        f"{BASE}/media/aggregates/4.json", body=json.dumps([[0.5, 1.5]]), content_type="text/plain"
    )
    c = client(registry)
    assert c.check_for_new_model_aggregate(update_after=4) is None  # fresh client: no crash
    new = c.check_for_new_model_aggregate()
    assert new is not None and new["result"] == [[0.5, 1.5]] and new["id"] == 4
    assert responses.calls[-1].request.headers["CLIENT-UUID"] == UUID
    assert c.check_for_new_model_aggregate() is None  # already seen


@responses.activate
def test_new_aggregate_with_a_tagged_result_is_decoded_by_its_tag(registry: CodecRegistry) -> None:
    # The client sends json, but the service serves an npz-b64 payload: decoded anyway.
    tagged = registry.get("npz-b64").encode([("w", np.array([1.5], np.float64))])
    responses.get(f"{API}/models/7/get_latest_aggregate/", json={"id": 1, "result": "/m/1"})
    responses.get(f"{BASE}/m/1", json=tagged)
    new = client(registry).check_for_new_model_aggregate()
    assert new is not None and new["result"]["w"].tolist() == [1.5]


@responses.activate
def test_empty_answers_mean_nothing_yet(registry: CodecRegistry) -> None:
    for route in ("get_latest_aggregate", "get_latest_model", "get_current_artifact"):
        responses.get(f"{API}/models/7/{route}/", json={})
    c = client(registry)
    assert c.check_for_new_model_aggregate() is None
    assert c.check_for_latest_model() is None
    assert c.get_current_artifact() is None


@responses.activate
def test_current_artifact_downloads_its_values(registry: CodecRegistry) -> None:
    artifact = {
        "id": 2,
        "values": "/media/artifacts/2.json",
        "version": "1.0.0",
        "federated_model": 7,
    }
    responses.get(f"{API}/models/7/get_current_artifact/", json=artifact)
    responses.get(f"{BASE}/media/artifacts/2.json", json=[[1.0], [2.0]])
    got = client(registry).get_current_artifact(
        like=[np.zeros(1, np.float32), np.zeros(1, np.float32)]
    )
    assert got is not None and got["version"] == "1.0.0"
    assert [v.dtype for v in got["values"]] == [np.float32, np.float32]


@responses.activate
def test_send_val_results_posts_the_score_for_an_aggregate(registry: CodecRegistry) -> None:
    responses.post(f"{API}/client_aggregate_scores/", status=201, json={"id": 1})
    client(registry).send_val_results({"accuracy": np.float64(0.93)}, 4)
    assert body_of(responses.calls[0]) == {
        "validation_results": {"accuracy": 0.93},
        "aggregate": 4,
        "client": UUID,
    }


# -- failures -----------------------------------------------------------------------


@responses.activate
def test_an_html_500_becomes_an_api_error_with_a_short_excerpt(registry: CodecRegistry) -> None:
    page = (
        "<html><head><title>Server Error (500)</title></head><body>" + "x" * 5000 + "</body></html>"
    )
    responses.post(
        f"{API}/client_aggregate_scores/", status=500, body=page, content_type="text/html"
    )
    with pytest.raises(APIException) as err:
        client(registry).send_val_results({}, 1)
    assert err.value.status_code == 500
    assert str(err.value) == "An API error occurred (status_code=500): Server Error (500)"


@responses.activate
def test_a_200_that_is_not_json_is_a_decode_error(registry: CodecRegistry) -> None:
    responses.post(f"{API}/models/7/register_client/", body="<html>proxy login</html>")
    with pytest.raises(DecodeError, match="not JSON"):
        client(registry).register()


def test_connection_refused_is_a_connect_error(registry: CodecRegistry) -> None:
    c = WebClient(1, UUID, "http://127.0.0.1:9", registry=registry, retries=0)
    with pytest.raises(ConnectError) as err:
        c.check_for_latest_model()
    assert str(err.value) == (
        "GET http://127.0.0.1:9/api/v1/models/1/get_latest_model/: cannot reach the service at "
        "http://127.0.0.1:9/: connection refused"
    )
    assert isinstance(err.value.__cause__, requests.ConnectionError)  # the details, chained


@responses.activate
def test_an_unknown_host_is_a_connect_error_naming_the_root_cause(
    registry: CodecRegistry,
) -> None:
    import urllib3

    # The chain requests raises for a failed DNS lookup, built without a resolver.
    lookup = socket.gaierror(-2, "Name or service not known")
    resolution = urllib3.exceptions.NameResolutionError("fma.test", None, lookup)  # type: ignore[arg-type]
    resolution.__cause__ = lookup
    wrapped = urllib3.exceptions.MaxRetryError(None, "/api/v1/", resolution)  # type: ignore[arg-type]
    responses.get(f"{API}/models/7/get_latest_model/", body=requests.ConnectionError(wrapped))
    with pytest.raises(ConnectError) as err:
        client(registry).check_for_latest_model()
    assert str(err.value).endswith(
        "cannot reach the service at http://fma.test/: name or service not known"
    )
    assert "Max retries" not in str(err.value)


@responses.activate
def test_a_timeout_is_a_request_timeout(registry: CodecRegistry) -> None:
    responses.get(f"{API}/models/7/get_latest_model/", body=requests.ReadTimeout("slow"))
    with pytest.raises(RequestTimeout, match="timeout"):
        client(registry).check_for_latest_model()


@responses.activate
def test_gets_are_retried_on_503(registry: CodecRegistry) -> None:
    responses.get(f"{API}/models/7/get_latest_model/", status=503, json={"detail": "busy"})
    responses.get(f"{API}/models/7/get_latest_model/", json={})
    c = WebClient(7, UUID, BASE, registry=registry, retries=2)
    adapter = c._transport.session.adapters[f"{BASE}/"]
    assert isinstance(adapter, HTTPAdapter)
    adapter.max_retries.backoff_factor = 0  # no sleeping in tests
    assert c.check_for_latest_model() is None
    assert len(responses.calls) == 2


@responses.activate
def test_posts_are_not_retried_on_503(registry: CodecRegistry) -> None:
    responses.post(f"{API}/model_updates/", status=503, json={"detail": "busy"})
    c = WebClient(7, UUID, BASE, registry=registry, retries=2)
    with pytest.raises(APIException, match="status_code=503"):
        c.send_update([1.0])
    assert len(responses.calls) == 1


# -- options ------------------------------------------------------------------------


@responses.activate
def test_headers_and_auth_options_apply_to_every_request(registry: CodecRegistry) -> None:
    responses.get(f"{API}/models/7/get_latest_model/", json={})
    with client(registry, headers={"X-Trace": "abc"}, auth=TokenAuth("s3cret")) as c:
        c.check_for_latest_model()
    headers = responses.calls[0].request.headers
    assert headers["X-Trace"] == "abc" and headers["Authorization"] == "Token s3cret"


def test_a_callers_session_is_used_and_left_open(registry: CodecRegistry) -> None:
    session = requests.Session()
    with client(registry, session=session) as c:
        assert c._transport.session is session
    assert session.adapters  # still usable: the client did not close it


@responses.activate
def test_an_update_is_resent_with_the_same_idempotency_key_when_asked(
    registry: CodecRegistry,
) -> None:
    responses.post(f"{API}/model_updates/", status=503, headers={"Retry-After": "0"})
    responses.post(f"{API}/model_updates/", body=requests.ConnectionError("reset"))
    responses.post(f"{API}/model_updates/", status=201, json={"id": 8})
    c = WebClient(7, UUID, BASE, registry=registry, codec="msgpack", retries=3, retry_updates=True)
    c._transport.backoff_factor = 0  # no sleeping in tests
    assert c.send_update(WEIGHTS) == {"id": 8}
    keys = {call.request.headers["Idempotency-Key"] for call in responses.calls}
    assert len(responses.calls) == 3 and len(keys) == 1
    assert binary_body(responses.calls[2]) == binary_body(responses.calls[0])


@responses.activate
def test_resending_gives_up_after_the_configured_retries(registry: CodecRegistry) -> None:
    responses.post(f"{API}/model_updates/", status=502, body="<title>Bad Gateway</title>")
    c = WebClient(7, UUID, BASE, registry=registry, retries=2, retry_updates=True)
    c._transport.backoff_factor = 0
    with pytest.raises(APIException, match=r"status_code=502\): Bad Gateway"):
        c.send_update([1.0])
    assert len(responses.calls) == 3


# -- seed compatibility and edge cases found in review --------------------------------


def test_api_exception_keeps_the_original_constructor_and_pickles() -> None:
    assert str(APIException()) == (
        "An API error occurred (status_code=NULL): Could not connect to the server."
    )
    err = APIException(status_code=403, message={"detail": "Invalid UUID"})
    assert err.error_message == str(err)
    assert err.status_code == 403 and err.detail == {"detail": "Invalid UUID"}
    again = pickle.loads(pickle.dumps(APIError(404, "gone", "check the url")))
    assert (again.status_code, again.detail, str(again)) == (
        404,
        "gone",
        str(APIError(404, "gone", "check the url")),
    )


@responses.activate
def test_a_404_names_the_url_it_could_not_find(registry: CodecRegistry) -> None:
    responses.get(f"{API}/models/7/get_latest_model/", status=404, json={"detail": "Not found."})
    with pytest.raises(
        APIException,
        match=r"status_code=404.*Nothing at GET http://fma\.test/api/v1/models/7/get_latest_model/",
    ):
        client(registry).check_for_latest_model()


@responses.activate
def test_a_latest_model_that_is_neither_json_nor_a_codec_is_a_decode_error(
    registry: CodecRegistry,
) -> None:
    responses.get(
        f"{API}/models/7/get_latest_model/", body="maintenance", content_type="text/plain"
    )
    with pytest.raises(DecodeError, match="text/plain"):
        client(registry).check_for_latest_model()


@pytest.mark.parametrize(
    ("results", "message"),
    [
        ({"loss": float("nan")}, r"validation_results\.loss is nan"),
        ({"acc": [np.float32(np.inf)]}, r"validation_results\.acc\.0 is"),
        ({"x": object()}, "cannot write this as JSON"),
    ],
)
def test_validation_results_json_cannot_carry_are_refused(
    registry: CodecRegistry, results: dict[str, Any], message: str
) -> None:
    with pytest.raises(EncodeError, match=message):
        client(registry).send_val_results(results, 1)


@responses.activate
def test_a_callers_session_is_not_changed(registry: CodecRegistry) -> None:
    responses.get(f"{API}/models/7/get_latest_model/", json={})
    session = requests.Session()
    with client(registry, session=session, headers={"X-Team": "a"}, auth=TokenAuth("t")) as c:
        c.check_for_latest_model()
    assert "X-Team" not in session.headers and session.auth is None
    assert responses.calls[0].request.headers["X-Team"] == "a"


@pytest.fixture
def silent_server() -> Iterator[tuple[str, list[bytes]]]:
    """A loopback socket that accepts, reads what it is sent and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(0.1)
            with conn:
                while not stop.is_set():
                    try:
                        chunk = conn.recv(1 << 16)
                    except TimeoutError:
                        continue
                    if not chunk:
                        break
                    received.append(chunk)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", received
    stop.set()
    thread.join()
    listener.close()


def test_a_silent_service_is_a_timeout_even_after_retries(
    registry: CodecRegistry, silent_server: tuple[str, list[bytes]]
) -> None:
    url, _ = silent_server
    c = WebClient(7, UUID, url, registry=registry, timeout=0.3, retries=1)
    adapter = c._transport.session.adapters[f"{url}/"]
    assert isinstance(adapter, HTTPAdapter)
    adapter.max_retries.backoff_factor = 0
    with pytest.raises(RequestTimeout, match="raise WebClient\\(timeout=...\\)"):
        c.get_current_artifact()
