"""AdminClient: malformed options are refused at construction, secrets unshown, statuses named."""

from __future__ import annotations

from typing import Any

import pytest
import responses

from fma_connect import ConfigurationError, UpdateStatus
from fma_connect.admin import AdminClient

BASE = "http://fma.test"


@pytest.mark.parametrize(
    ("url", "token", "options", "message"),
    [
        (BASE, None, {}, "token must be the admin's API token, .*got None"),
        (BASE, "", {}, "token must be the admin's API token, .*got ''"),
        (BASE, 1234, {}, "token must be the admin's API token, .*got 1234"),
        (BASE, "t", {"session": "s"}, "session must be a requests.Session .*got 's'"),
        (BASE, "t", {"retries": "3"}, "retries must be an integer >= 0, got '3'"),
        (f"{BASE}/api/v1/", "t", {}, f"url must be the service root.*'{BASE}/'"),
    ],
)
def test_malformed_options_are_refused_at_construction(
    url: str, token: Any, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        AdminClient(url, token, **options)


def test_a_token_with_a_line_break_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigurationError, match="got <hidden>") as err:
        AdminClient(BASE, "s3cret\n")
    assert "s3cret" not in str(err.value)


def _updates(statuses: list[Any]) -> list[dict[str, Any]]:
    return [{"id": i, "federated_model": 1, "status": s} for i, s in enumerate(statuses, 1)]


@responses.activate
def test_update_statuses_come_back_as_names_that_equal_their_numbers() -> None:
    responses.get(f"{BASE}/api/v1/models/1/", json={"id": 1})
    responses.get(f"{BASE}/api/v1/model_updates/", json=_updates([0, 1, 2, 3, 4, 7, None]))
    with AdminClient(BASE, "t") as admin:
        statuses = [row["status"] for row in admin.list_updates(1)]
    assert statuses[:5] == [0, 1, 2, 3, 4]  # code written against the numbers still works
    assert [s.name for s in statuses[:5]] == ["PENDING", "RUNNING", "COMPLETE", "FAILED", "INVALID"]
    assert statuses[2] is UpdateStatus.COMPLETE
    # What the enum does not know is kept as the service sent it.
    assert statuses[5:] == [7, None] and type(statuses[5]) is int


def test_the_repr_shows_the_url_but_never_the_token() -> None:
    admin = AdminClient(BASE, "s3cret-token")
    assert repr(admin) == f"AdminClient(url='{BASE}', token=<hidden>)"
    assert "s3cret" not in repr(admin) and "s3cret" not in str(admin)
