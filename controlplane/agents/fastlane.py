"""The heartbeat's fast lane: its usual case served without the framework's per-request work.

A fleet's heartbeats are most of its requests, and nearly all of them are alike: a known agent key
(in the key cache), its own path, a small valid body. For those, resolving the handler's
signature, building a connection object per layer and a response object cost several times what
the heartbeat itself does. This middleware sits just inside the metrics layer (so every request is
still counted, timed, logged and given its request id) and serves exactly that case with the same
rules and helpers as the layers it skips: the address throttle's peek, the agent key from the
cache with its agent and scope, the agent budget with its ``X-RateLimit-*`` headers, the body
decoded into :class:`shared.agents.Heartbeat` and :func:`controlplane.agents.service.receive_heartbeat`.

Anything else goes down the ordinary chain untouched, with the body it read replayed: no or
another credential, a key not in the cache, a key of another agent or without the scope, an
address whose budget is spent, a body too large or one that does not decode. Nothing is counted
before that choice is made, so a request that goes down the chain is counted once, by the chain,
and gets the chain's answer, errors included. ``BYTEOR_CLOUD_HEARTBEAT_FAST_LANE=false`` turns the
lane off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from controlplane.agents.service import receive_heartbeat
from controlplane.auth.secrets import TokenKind, digest_token
from controlplane.db.scoped import close_request_session, request_session
from controlplane.ratelimit.middleware import client_address, refused
from shared.agents import Heartbeat, HeartbeatResponse

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send

    from controlplane.auth.principal import AgentPrincipal

__all__ = ["FAST_LANE", "HeartbeatFastLane"]

#: The route option that sends a route's requests through the lane.
FAST_LANE = "heartbeat_fast_lane"
#: A heartbeat body is well under a kilobyte; a longer one takes the ordinary chain (and its cap).
MAX_BODY = 64 * 1024
SCOPE = "agent:heartbeat"
_PREFIX = TokenKind.AGENT_KEY.value
_decoder = msgspec.json.Decoder(Heartbeat)
_encoder = msgspec.json.Encoder()
_JSON = [(b"content-type", b"application/json")]


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
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = scope.get("route_handler")
        state: Any = scope["app"].state
        if (
            handler is None
            or not handler.opt.get(FAST_LANE)
            or scope.get("method") != "POST"
            or not state.settings.heartbeat_fast_lane
        ):
            await self.app(scope, receive, send)
            return
        agent = self._cached_agent(scope, state)
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
        await self._serve(scope, send, state, agent, heartbeat)

    @staticmethod
    def _cached_agent(scope: Scope, state: Any) -> AgentPrincipal | None:
        """The agent of the request's key when the key cache vouches for it on this path."""
        token = _bearer(scope)
        if token is None:
            return None
        agent: AgentPrincipal | None = state.agent_keys.get(digest_token(token))
        if (
            agent is None
            or scope.get("path_params", {}).get("agent_id") != agent.agent_id
            or SCOPE not in agent.scopes
        ):
            return None
        return agent

    @staticmethod
    async def _serve(
        scope: Scope, send: Send, state: Any, agent: AgentPrincipal, heartbeat: Heartbeat
    ) -> None:
        verdict = await state.rate_limiter.hit("agent", agent.key_id)
        if not verdict.allowed:
            raise refused(verdict, "Rate limit of the agent budget reached; retry later")
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
