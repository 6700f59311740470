"""Every org-scoped route x every role: allowed, 403 (member, role too low), 404 (outsider), 401.

Each case also checks the effect, through the owner's view of what the route touches (its
``observe`` path): a refused write leaves it exactly as it was, a permitted write changes it, a
read changes nothing, and no refusal (401, 403, 404) carries a field of the resource in its
problem document.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from shared.roles import Role
from tests.conftest import Actor, Stack, Tree
from tests.controlplane.bundles.test_bundles import build
from tests.controlplane.pipelines.plans import SINGLE_RING

pytestmark = pytest.mark.anyio

Prepare = Callable[[Stack, Tree], Awaitable[dict[str, str]]]


async def _nothing(_stack: Stack, _tree: Tree) -> dict[str, str]:
    return {}


async def _viewer_member(stack: Stack, tree: Tree) -> dict[str, str]:
    body = await stack.ok(
        "POST",
        f"{tree.org_path}/members",
        tree.owner,
        json={"email": f"{stack.unique('m')}@example.com", "role": "viewer"},
    )
    return {"user": body["user_id"]}


async def _service_account(stack: Stack, tree: Tree) -> dict[str, str]:
    body = await stack.ok(
        "POST",
        f"{tree.org_path}/service-accounts",
        tree.owner,
        json={"name": "ci", "role": "viewer"},
    )
    return {"sa": body["id"], "token": body["token_id"]}


async def _draft(stack: Stack, tree: Tree) -> dict[str, str]:
    body = await stack.ok(
        "POST", f"{tree.env_path}/drafts", tree.owner, json={"name": "d", "plan": SINGLE_RING}
    )
    return {"draft": body["id"]}


async def _version(stack: Stack, tree: Tree) -> dict[str, str]:
    ids = await _draft(stack, tree)
    body = await stack.ok("POST", f"{tree.env_path}/drafts/{ids['draft']}/version", tree.owner)
    return ids | {"version": body["id"]}


async def _bundle(stack: Stack, tree: Tree) -> dict[str, str]:
    ids = await _version(stack, tree)
    body = await build(stack, tree, ids["version"])  # settled, so the case sees no build finish
    assert body["status"] == "ready", body
    return ids | {"bundle": body["id"]}


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    minimum: Role
    body: dict[str, Any] | None = None
    prepare: Prepare = _nothing
    status: int | None = None
    observe: str | None = None  # the owner's GET that shows the effect; default: the path
    mutates: bool | None = None  # default: every method but GET

    @property
    def writes(self) -> bool:
        return self.method != "GET" if self.mutates is None else self.mutates

    @property
    def observed(self) -> str:
        return self.observe or self.path

    @property
    def success(self) -> int:
        if self.status is not None:
            return self.status
        return {"GET": 200, "POST": 201, "PUT": 200, "DELETE": 204}[self.method]

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


ORG = "/api/v1/orgs/{org}"
PRJ = ORG + "/projects/{project}"
ENV = PRJ + "/environments/{env}"
SA = ORG + "/service-accounts/{sa}"
DRAFT = ENV + "/drafts/{draft}"

ROUTES = [
    Route("GET", ORG, Role.VIEWER),
    Route("PUT", ORG, Role.ADMIN, {"name": "renamed"}),
    Route("GET", ORG + "/projects", Role.VIEWER),
    Route("POST", ORG + "/projects", Role.ADMIN, {"name": "new-project"}),
    Route("GET", PRJ, Role.VIEWER),
    Route("PUT", PRJ, Role.ADMIN, {"description": "changed"}),
    Route("DELETE", PRJ, Role.ADMIN),
    Route("GET", PRJ + "/environments", Role.VIEWER),
    Route("POST", PRJ + "/environments", Role.ADMIN, {"name": "staging"}),
    Route("GET", ENV, Role.VIEWER),
    Route("PUT", ENV, Role.ADMIN, {"approvals_required": 2}),
    Route("DELETE", ENV, Role.ADMIN),
    Route("GET", ORG + "/members", Role.VIEWER),
    Route("POST", ORG + "/members", Role.ADMIN, {"email": "new@example.com", "role": "viewer"}),
    Route(
        "PUT",
        ORG + "/members/{user}",
        Role.ADMIN,
        {"role": "deployer"},
        _viewer_member,
        observe=ORG + "/members",
    ),
    Route(
        "DELETE",
        ORG + "/members/{user}",
        Role.ADMIN,
        None,
        _viewer_member,
        observe=ORG + "/members",
    ),
    Route("GET", ORG + "/service-accounts", Role.ADMIN),
    Route("POST", ORG + "/service-accounts", Role.ADMIN, {"name": "ci", "role": "viewer"}),
    Route("DELETE", SA, Role.ADMIN, None, _service_account, observe=ORG + "/service-accounts"),
    Route("GET", SA + "/tokens", Role.ADMIN, None, _service_account),
    Route("POST", SA + "/tokens", Role.ADMIN, {"name": "deploy"}, _service_account),
    Route(
        "DELETE", SA + "/tokens/{token}", Role.ADMIN, None, _service_account, observe=SA + "/tokens"
    ),
    Route("GET", ENV + "/drafts", Role.VIEWER),
    Route("POST", ENV + "/drafts", Role.DEPLOYER, {"name": "new", "plan": SINGLE_RING}),
    Route("GET", DRAFT, Role.VIEWER, None, _draft),
    Route("PUT", DRAFT, Role.DEPLOYER, {"name": "renamed", "plan": SINGLE_RING}, _draft),
    Route(
        "POST",
        DRAFT + "/preview",
        Role.VIEWER,
        None,
        _draft,
        status=200,
        observe=DRAFT,
        mutates=False,
    ),
    Route("POST", DRAFT + "/version", Role.DEPLOYER, None, _draft, observe=ENV + "/versions"),
    Route("GET", ENV + "/versions", Role.VIEWER),
    Route("GET", ENV + "/versions/{version}", Role.VIEWER, None, _version),
    Route("GET", ENV + "/config-bundles", Role.VIEWER),
    Route(
        "POST",
        ENV + "/config-bundles",
        Role.DEPLOYER,
        {"pipeline_version_id": "{version}"},
        _version,
        status=202,
    ),
    Route("GET", ENV + "/config-bundles/{bundle}", Role.VIEWER, None, _bundle),
    Route("GET", ENV + "/runtime-config", Role.VIEWER),
    Route("GET", ORG + "/signing-keys", Role.VIEWER),
    Route(
        "POST", ORG + "/signing-keys/rotate", Role.ADMIN, status=201, observe=ORG + "/signing-keys"
    ),
]

CALLERS = [*Role, "outsider", "anonymous"]


@pytest.mark.parametrize("route", ROUTES, ids=str)
@pytest.mark.parametrize("who", CALLERS, ids=str)
async def test_route_checks_role(stack: Stack, route: Route, who: Role | str) -> None:
    tree = await stack.tree()
    ids = {"org": tree.org_id, "project": tree.project_id, "env": tree.env_id}
    ids |= await route.prepare(stack, tree)
    path = route.path.format(**ids)

    caller: Actor | None
    if who == "anonymous":
        caller, expected = None, 401
    elif who == "outsider":
        caller, expected = await stack.human(), 404
    else:
        role = Role(who)
        caller = tree.owner if role is Role.OWNER else await stack.member(tree, role)
        expected = route.success if role.at_least(route.minimum) else 403

    body = {k: v.format(**ids) if isinstance(v, str) else v for k, v in (route.body or {}).items()}
    observed = route.observed.format(**ids)
    before = await _owner_view(stack, tree, observed)
    response = await stack.call(route.method, path, caller, json=body if route.body else None)
    after = await _owner_view(stack, tree, observed)

    assert response.status_code == expected, response.text
    if expected >= 400:
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["status"] == expected
        assert after == before, f"refused {route} changed {observed}"
        ordinary = {path, *path.split("/"), *(role.value for role in Role)}
        leaked = _fields(before[1]) - _fields(body) - ordinary
        assert not [value for value in leaked if value in response.text], problem
    elif route.writes:
        assert after != before, f"{route} answered {expected} but {observed} did not change"
    else:
        assert after == before, f"{route} is a read but changed {observed}"
    if expected == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")


async def _owner_view(stack: Stack, tree: Tree, path: str) -> tuple[int, Any]:
    """What the owner sees at ``path``: its status and document."""
    response = await stack.call("GET", path, tree.owner)
    return response.status_code, response.json() if response.content else None


def _fields(document: Any) -> set[str]:
    """Every distinctive string in ``document`` (ids, names, digests, times): what a problem
    document about it must not repeat."""
    if isinstance(document, dict):
        return {s for value in document.values() for s in _fields(value)}
    if isinstance(document, list):
        return {s for value in document for s in _fields(value)}
    if isinstance(document, str) and len(document) >= 6:
        return {document}
    return set()
