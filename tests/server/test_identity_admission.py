"""Who may join a model and bind a key (docs/SECURITY.md, "Enrolment"): admission recorded
per model and client, keys bound to an existing client only with a token bound to it,
refused enrolments that write nothing, small-order keys refused, nonce pruning on a
skewed clock."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from fma_connect import APIError, ClientKey, WebClient
from fma_connect.admin import AdminClient
from fma_connect.server.database import open_database
from fma_connect.server.keys import Keys
from fma_connect.server.nonces import WINDOW
from fma_connect.server.store import Store
from fma_connect.server.testing import RunningServer
from fma_connect.signing import public_key_problem


def _model(admin: AdminClient, enrolment: str, **options: Any) -> int:
    model = admin.create_model(
        f"{enrolment} model", enrolment=enrolment, initial_model=[np.ones(2)], **options
    )
    return int(model["id"])


def _count(data_dir: Path, database: str | None, table: str) -> int:
    db = open_database(database, data_dir / "fma.sqlite3")
    try:
        row = db.one(f"SELECT COUNT(*) AS n FROM {table}")
        assert row is not None
        return int(row["n"])
    finally:
        db.close()


def test_a_token_model_cannot_be_joined_through_an_open_model(
    server: RunningServer, admin: AdminClient
) -> None:
    # Repro 1 A: the victim registered with B while B was open; B then requires tokens.
    victim_model = _model(admin, "open", requirement="require_x_updates", requirement_args=[9])
    open_model = _model(admin, "open")
    victim = WebClient(victim_model, url=server.url, retries=0)
    victim.register()
    admin.update_model(victim_model, enrolment="token")
    # Binding a key to the victim's UUID on the open model is refused (no bound token).
    key = ClientKey.generate()
    thief = WebClient(open_model, uuid=victim.uuid, url=server.url, identity=key, retries=0)
    with pytest.raises(APIError, match="bound to that client") as refused:
        thief.enrol()
    assert refused.value.status_code == 403
    assert admin.client_keys(victim.uuid) == []
    # A client that enrolled its own key on the open model, and was registered with the
    # token model before it required tokens, is not admitted there without a token.
    own = ClientKey.generate()
    member = WebClient(open_model, url=server.url, identity=own, retries=0)
    member.enrol()
    admin.update_model(victim_model, enrolment="open")
    WebClient(victim_model, member.uuid, server.url, identity=own, retries=0).register()
    admin.update_model(victim_model, enrolment="token")
    on_token = WebClient(victim_model, member.uuid, server.url, identity=own, retries=0)
    with pytest.raises(APIError, match="lacks the enrolment") as again:
        on_token.send_update([np.full(2, 7.0)])
    assert again.value.status_code == 403
    assert admin.list_updates(victim_model) == []
    # With a token of the model it is admitted.
    on_token.enrol(token=admin.enrolment_token(victim_model)["token"])
    on_token.send_update([np.full(2, 7.0)])
    assert len(admin.list_updates(victim_model)) == 1


def test_a_key_is_bound_to_an_existing_client_only_with_a_token_bound_to_it(
    server: RunningServer, admin: AdminClient
) -> None:
    # Repro 2 G: a retired UUID (its key revoked) is not taken over with another token.
    model_id = _model(admin, "token")
    lost = ClientKey.generate()
    first = WebClient(model_id, url=server.url, identity=lost, retries=0)
    first.enrol(token=admin.enrolment_token(model_id)["token"])
    admin.revoke(first.uuid, key_id=lost.key_id)
    thief = WebClient(model_id, first.uuid, server.url, identity=ClientKey.generate(), retries=0)
    with pytest.raises(APIError, match="bound to that client") as refused:
        thief.enrol(token=admin.enrolment_token(model_id)["token"])
    assert refused.value.status_code == 403
    # A token bound to another client is refused too; one bound to this client works.
    other = admin.enrolment_token(model_id, client=thief.uuid)
    assert other["client"] == first.uuid
    stranger = WebClient(model_id, url=server.url, identity=ClientKey.generate(), retries=0)
    with pytest.raises(APIError, match="bound to client"):
        stranger.enrol(token=other["token"])
    assert thief.enrol(token=other["token"]) == first.uuid
    with pytest.raises(APIError, match="No client"):
        admin.enrolment_token(model_id, client="00000000-0000-4000-8000-000000000000")


def test_refused_enrolments_write_no_nonce(
    server: RunningServer, admin: AdminClient, data_dir: Path, database: str | None
) -> None:
    model_id = _model(admin, "token")
    before = _count(data_dir, database, "request_nonces")
    url = f"{server.url}/api/v1/models/{model_id}/enrol/"
    for token in (None, "made-up"):
        key = ClientKey.generate()
        body: dict[str, Any] = {"public_key": key.public_key}
        if token is not None:
            body["token"] = token
        sent = requests.post(
            url, json=body, headers=key.request_headers("POST", url, None), timeout=30
        )
        assert sent.status_code in (400, 403), sent.text
    assert _count(data_dir, database, "request_nonces") == before
    # An enrolment that is admitted spends its nonce: replayed, it is refused.
    key = ClientKey.generate()
    headers = key.request_headers("POST", url, None)
    body = {"public_key": key.public_key, "token": admin.enrolment_token(model_id)["token"]}
    assert requests.post(url, json=body, headers=headers, timeout=30).status_code == 200
    replayed = requests.post(url, json=body, headers=headers, timeout=30)
    assert replayed.status_code == 409 and "bound to another client" in replayed.text
    assert _count(data_dir, database, "request_nonces") == before + 1


_SMALL_ORDER = "AQ" + "A" * 41 + "="  # 01 00 .. 00: the neutral point


def test_small_order_and_non_canonical_keys_are_refused(
    server: RunningServer, admin: AdminClient
) -> None:
    assert base64.b64decode(_SMALL_ORDER) == b"\x01" + bytes(31)
    assert public_key_problem(base64.b64decode(_SMALL_ORDER)) is not None
    assert public_key_problem(base64.b64decode(ClientKey.generate().public_key)) is None
    non_canonical = (2**255 - 19 + 1).to_bytes(32, "little")  # y = p + 1: y = 1 again
    assert "not canonical" in str(public_key_problem(non_canonical))
    model_id = _model(admin, "keys")
    with pytest.raises(APIError, match="small order") as refused:
        admin.allow_key(model_id, _SMALL_ORDER)
    assert refused.value.status_code == 400
    url = f"{server.url}/api/v1/models/{model_id}/enrol/"
    sent = requests.post(url, json={"public_key": _SMALL_ORDER}, timeout=30)
    assert sent.status_code == 400 and "small order" in sent.text
    assert sent.headers["content-type"].startswith("application/json")


def test_nonces_are_pruned_a_window_late_on_a_skewed_clock(
    tmp_path: Path, database: str | None
) -> None:
    now = [time.time()]
    store = Store(tmp_path / "fma.sqlite3", database)
    try:
        keys = Keys(store, lambda: now[0])
        assert keys.spend_nonce("c", "a" * 32, int(now[0]))
        # A replica whose clock is a window and more ahead: the nonce stays, since a
        # replica on time still accepts its timestamp.
        now[0] += WINDOW + 30
        assert keys.spend_nonce("c", "b" * 32, int(now[0]))
        assert not keys.spend_nonce("c", "a" * 32, int(now[0]) - int(WINDOW) - 30)
        now[0] += 2 * WINDOW + 60
        keys._pruned = 0.0  # due again
        assert keys.spend_nonce("c", "c" * 32, int(now[0]))
        left = {row["nonce"][0] for row in store.all("SELECT nonce FROM request_nonces")}
        assert left == {"c"}
    finally:
        store.close()
