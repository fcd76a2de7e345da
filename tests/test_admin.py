"""AdminClient options: malformed ones are refused at construction, secrets unshown."""

from __future__ import annotations

from typing import Any

import pytest

from fma_connect import ConfigurationError
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
