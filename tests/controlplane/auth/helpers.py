"""Helpers shared by the login tests."""

from __future__ import annotations

from typing import Any

import httpx

from shared.problem import PROBLEM_CONTENT_TYPE


def cookie(name: str, value: str, **headers: str) -> dict[str, str]:
    """Request headers sending one cookie (httpx deprecates per-request ``cookies=``)."""
    return {**headers, "Cookie": f"{name}={value}"}


def assert_problem(response: httpx.Response, status: int, *needles: str) -> dict[str, Any]:
    """The problem+json body of ``response``, which must have ``status`` and name ``needles``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_CONTENT_TYPE)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    for needle in needles:
        assert needle in body["detail"], body["detail"]
    return body
