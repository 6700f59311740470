"""The bundles this process has handed an agent a manifest for, so its download needs no query.

An agent may download a bundle archive only if a manifest for it was issued to that agent (a
deployment target row names the agent and the digest). During a rollout a whole fleet polls,
gets its manifest and downloads the same archive within seconds; checking that row for every
download costs a pooled connection per host at exactly the moment the pool is busiest. A
manifest handed out here is proof enough, so the poll that hands it out records the pair and the
download that follows (almost always on the same connection, so in the same process) is
answered from memory. What is not recorded here (another process handed the manifest out, or
this one restarted) is checked in the database as before, and recorded once found.

A grant never needs taking back: target rows are only ever deleted with their agent (the
environment, project or organization above it), and a deleted agent's key stops authenticating
within the key cache's bound, before any grant is consulted. The table is bounded: when full it
starts again empty, which costs one query per download until it fills again.
"""

from __future__ import annotations

__all__ = ["BundleGrants"]

#: Pairs kept before the table starts again empty (about 200 bytes each).
DEFAULT_LIMIT = 200_000


class BundleGrants:
    """A bounded set of ``(agent_id, bundle digest)`` pairs this process knows to be granted."""

    __slots__ = ("_granted", "_limit", "hits", "misses")

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._limit = limit
        self._granted: set[tuple[str, str]] = set()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._granted)

    def grant(self, agent_id: str, digest: str) -> None:
        """Record that a manifest for ``digest`` was issued to ``agent_id``."""
        key = (agent_id, digest)
        if key in self._granted:
            return
        if len(self._granted) >= self._limit:
            self._granted.clear()
        self._granted.add(key)

    def granted(self, agent_id: str, digest: str) -> bool:
        """Whether the pair is known here (``False`` means: ask the database)."""
        if (agent_id, digest) in self._granted:
            self.hits += 1
            return True
        self.misses += 1
        return False
