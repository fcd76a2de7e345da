"""Authentication helpers for requests made by fma_connect."""

from __future__ import annotations

import requests
from requests.auth import AuthBase

__all__ = ["TokenAuth"]


class TokenAuth(AuthBase):
    """Django REST framework token auth: ``Authorization: Token <key>`` (FMA admin routes)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Token {self.token}"
        return request

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokenAuth) and other.token == self.token

    def __hash__(self) -> int:
        return hash(self.token)

    def __repr__(self) -> str:
        return "TokenAuth(<hidden>)"
