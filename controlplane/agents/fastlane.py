"""The heartbeat's fast lane: its usual case served without the framework's per-request work.

A fleet's heartbeats are most of its requests, and nearly all of them are alike: a known agent key
(in the key cache), its own path, a small valid body. For those, routing, the exception layer,
resolving the handler's signature, building a connection object per layer and a response object
cost several times what the heartbeat itself does. :func:`install` puts this lane in front of the
application's router (inside ``Litestar.__call__``, so the app's ``before_send`` hooks still run
and every answer still carries its ``X-Request-ID``). It serves exactly that case with the same
rules and helpers as the layers it skips: the router's ``Host`` check, the address throttle's
peek, the agent key from the cache with its agent and scope, the agent budget with its
``X-RateLimit-*`` headers, the body decoded into :class:`shared.agents.Heartbeat` and
:func:`controlplane.agents.service.receive_heartbeat`. What it serves goes through
:class:`~controlplane.observability.metrics.MetricsMiddleware` under the route's own template, so
it is counted, timed, logged and given its request id as a routed request is, and an error is
answered by the application's exception handlers (:func:`controlplane.errors.error_response`),
with the budget's headers as the route's chain adds them.

Anything else goes down the ordinary chain untouched, with the body it read replayed: another
method or spelling of the path (a trailing ``/``, a ``root_path``), no or another credential, a
key not in the cache, a key of another agent or without the scope, an address whose budget is
spent, a bad ``Host``, a body too large or one that does not decode. Nothing is counted before
that choice is made, so a request that goes down the chain is counted once, by the chain, and
gets the chain's answer, errors included. ``BYTEOR_CLOUD_HEARTBEAT_FAST_LANE=false`` turns the
lane off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from litestar._asgi.utils import is_valid_host
from litestar.enums import ScopeType

from controlplane.agents.service import receive_heartbeat
from controlplane.auth.secrets import TokenKind, digest_token
from controlplane.db.scoped import close_request_session, request_session
from controlplane.errors import error_response
from controlplane.observability.metrics import MetricsMiddleware
from controlplane.ratelimit.middleware import client_address, refused, with_rate_limit_headers
from shared.agents import Heartbeat, HeartbeatResponse

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar.handlers import HTTPRouteHandler
    from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send

    from controlplane.auth.principal import AgentPrincipal

__all__ = ["FAST_LANE", "HeartbeatFastLane", "install"]

#: The route option that sends a route's requests through the lane.
FAST_LANE = "heartbeat_fast_lane"
#: A heartbeat body is well under a kilobyte; a longer one takes the ordinary chain (and its cap).
MAX_BODY = 64 * 1024
SCOPE = "agent:heartbeat"
_PREFIX = TokenKind.AGENT_KEY.value
_decoder = msgspec.json.Decoder(Heartbeat)
_encoder = msgspec.json.Encoder()
_JSON = [(b"content-type", b"application/json")]
#: Where the lane hands its decided request (agent, heartbeat) to its metered part.
_LANE = "byteor.fast_lane"


def install(app: Litestar) -> None:
    """Put the lane in front of ``app``'s router, for the route whose option asks for it."""
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if handler.opt.get(FAST_LANE):
                app.asgi_handler = HeartbeatFastLane(app.asgi_handler, handler, route.path_format)
                return
    raise LookupError(f"no route has the {FAST_LANE!r} option")


async def _render(scope: Scope, receive: Receive, send: Send, exc: Exception) -> None:
    """Answer ``exc`` as the application's exception handlers do (nothing was sent yet)."""
    request = scope["app"].request_class(scope=scope, receive=receive, send=send)
    response = error_response(request, exc)
    await response.to_asgi_response(app=None, request=request)(scope, receive, send)


def _valid_host(scope: Scope) -> bool:
    """The router's own ``Host`` check (it answers 400 to a bad one: leave that to it)."""
    for name, value in scope["headers"]:
        if name == b"host":
            return is_valid_host(value)
    return True


def _bearer(scope: Scope) -> str | None:
    """The agent key of the ``Authorization`` header, if it holds exactly one."""
    found = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            if found is not None:
                return None
            found = value
    if found is None or found[:7].lower() != b"bearer ":
        return None
    token = found[7:].strip().decode("latin-1")
    return token if token.startswith(_PREFIX) else None


async def _read_body(receive: Receive, limit: int) -> tuple[list[ReceiveMessage], bytes | None]:
    """The messages read and the whole body, or ``None`` once it is longer than ``limit``."""
    messages: list[ReceiveMessage] = []
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return messages, None
        if not message.get("more_body", False):
            return messages, b"".join(chunks)


def _replaying(messages: list[ReceiveMessage], receive: Receive) -> Receive:
    """``receive`` that first hands out ``messages`` again, in order."""
    pending = list(reversed(messages))

    async def replayed() -> ReceiveMessage:
        if pending:
            return pending.pop()
        return await receive()

    return replayed


class HeartbeatFastLane:
    """Serves the usual heartbeat in front of the router; everything else goes to ``app``.

    ``app`` is the application's own ASGI handler (exception handling, routing and the route's
    middleware); :func:`install` puts the lane in front of it. ``handler`` is the heartbeat's
    route handler and ``template`` its path template, as the router would have set them.
    """

    def __init__(self, app: ASGIApp, handler: HTTPRouteHandler, template: str) -> None:
        self.app = app
        self.handler = handler
        self.template = template
        self._prefix, _, self._suffix = template.partition("{agent_id}")
        if not self._prefix or not self._suffix or "{" in self._prefix + self._suffix:
            raise ValueError(f"the fast lane needs one {{agent_id}} in its path, not {template!r}")
        # Counted, timed and logged as every routed request is; errors rendered as they are.
        self._metered = MetricsMiddleware(self._answer)

    def _agent_id(self, path: str) -> str | None:
        """The agent id of the heartbeat's exact path (anything else, even ``/``-ended: None)."""
        if not (path.startswith(self._prefix) and path.endswith(self._suffix)):
            return None
        agent_id = path[len(self._prefix) : len(path) - len(self._suffix)]
        return agent_id if agent_id and "/" not in agent_id else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != ScopeType.HTTP
            or scope.get("method") != "POST"
            or (agent_id := self._agent_id(scope["path"])) is None
            or scope.get("root_path")
        ):
            await self.app(scope, receive, send)
            return
        state: Any = scope["app"].state
        agent = None
        if state.settings.heartbeat_fast_lane and _valid_host(scope):
            agent = self._cached_agent(scope, state, agent_id)
        if (
            agent is None
            or not (await state.rate_limiter.peek("anonymous", client_address(scope))).allowed
        ):
            await self.app(scope, receive, send)
            return
        messages, body = await _read_body(
            receive, min(MAX_BODY, state.settings.max_request_body_bytes)
        )
        heartbeat = None
        if body is not None:
            try:
                heartbeat = _decoder.decode(body)
            except (msgspec.DecodeError, RecursionError):  # the route answers both 400
                heartbeat = None
        if heartbeat is None:
            await self.app(scope, _replaying(messages, receive), send)
            return
        # What the router would have set: the route, its template and its parameter.
        scope["route_handler"] = self.handler
        scope["path_template"] = self.template
        scope["path_params"] = {"agent_id": agent_id}
        scope["state"][_LANE] = (agent, heartbeat)  # Litestar gives every scope a state
        await self._metered(scope, receive, send)

    @staticmethod
    def _cached_agent(scope: Scope, state: Any, agent_id: str) -> AgentPrincipal | None:
        """The agent of the request's key when the key cache vouches for it on this path."""
        token = _bearer(scope)
        if token is None:
            return None
        agent: AgentPrincipal | None = state.agent_keys.get(digest_token(token))
        if agent is None or agent_id != agent.agent_id or SCOPE not in agent.scopes:
            return None
        return agent

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the beat; an error is answered as the route's own chain answers it."""
        agent, heartbeat = scope["state"].pop(_LANE)
        state: Any = scope["app"].state
        verdict = await state.rate_limiter.hit("agent", agent.key_id)
        if not verdict.allowed:
            error = refused(verdict, "Rate limit of the agent budget reached; retry later")
            await _render(scope, receive, send, error)
            return
        scope["user"], scope["auth"] = agent, agent.key_id
        state.metrics.heartbeats.inc()
        state.metrics.heartbeats_fast_lane.inc()
        try:
            answer: HeartbeatResponse = await receive_heartbeat(
                lambda: request_session(scope, state.database),
                agent,
                heartbeat,
                state.settings,
                state.heartbeats,
                state.kek,
                state.fleet,
            )
        except Exception as exc:  # noqa: BLE001 - rendered as the route's chain renders it
            # As the budget layer does for the route: the error carries the budget's headers.
            await _render(scope, receive, with_rate_limit_headers(send, verdict.headers(), []), exc)
            return
        finally:
            await close_request_session(scope)
        payload = _encoder.encode(answer)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    *_JSON,
                    (b"content-length", b"%d" % len(payload)),
                    *verdict.raw_headers(),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload, "more_body": False})
