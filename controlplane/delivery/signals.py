"""Long polls waiting for a manifest, and the agents recently found to have nothing to apply.

A deployment check that finds nothing new for its agent waits here until one of:

* this process issues the agent a manifest (a rollout, a rollback, a convergence decision), which
  wakes it at once (:meth:`AgentSignals.notify`);
* the environment's shared view (:class:`~controlplane.agents.fleetview.FleetView`, read once
  per environment per ``interval``, in any process) shows a manifest waiting for the agent that
  is newer than the one it holds, or a new desired bundle.

When the view shows manifests waiting that were issued elsewhere (another process's rollout),
the watcher reads them for all its woken polls at once (``manifests``, a few statements for
thousands of agents) and hands each poll its own, as a manifest issued here is: the poll
answers without a decision of its own (several statements each). What the batched read does
not find as it is (see :func:`~controlplane.delivery.convergence.waiting_manifests`), the poll
decides in full.

One watcher task per environment with waiting polls does the second, so a waiting poll costs
nothing until it is woken: no timer per poll per second. Polls register before they take their
decision, so a manifest issued meanwhile is never missed.

The control plane also remembers, per agent and for at most ``settled_seconds``, the answer a
full convergence decision gave (:meth:`AgentSignals.settle`) when that answer stays the same until
something happens (``Served.stable``): the agent reports, a manifest is issued to it, or the
environment's view shows another desired bundle, other deployments moving, or another manifest
waiting for the agent. A manifest handed to a poll here is remembered the same way, for as long
as the view shows it waiting for the agent. A new poll whose ETag names the remembered manifest
(or "nothing"), against a view that shows what it showed then, skips the decision and waits at
once. During a rollout that is what spares the control plane a decision for every poll of every
host that already holds its manifest, or already runs it while the others catch up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping

    from controlplane.agents.fleetview import EnvironmentView, FleetView

__all__ = ["AgentSignals", "Waiter"]

logger = logging.getLogger("byteor.controlplane.delivery")

_MAX_SETTLED = 1_000_000


@dataclass(slots=True, eq=False)
class Waiter:
    """One waiting deployment check: what it holds, and the event that wakes it."""

    agent_id: str
    event: asyncio.Event = field(default_factory=asyncio.Event)
    #: The sequence of the manifest the poll's ETag names (0: none).
    sequence: int = 0
    #: The environment's desired bundle when the poll took its decision.
    desired: str | None = None
    #: A manifest issued here meanwhile, handed over as (sequence, envelope): the poll answers
    #: with it without reading it back (a rollout wakes thousands of polls at once).
    delivered: tuple[int, Any] | None = None
    #: The agent reported since this poll began its decision (the poll clears it first): what
    #: it decided is not remembered (it may have read the state from before the report).
    acted: bool = False
    #: ``delivered`` was read from the database by the view's watcher (not issued here): a
    #: report meanwhile still counts, as for a decision.
    read: bool = False

    def stale_in(self, view: EnvironmentView) -> bool:
        """Whether ``view`` shows something this poll has not seen."""
        if view.desired_digest != self.desired:
            return True
        waiting = view.waiting.get(self.agent_id)
        return waiting is not None and waiting > self.sequence

    async def wait(self, timeout: float) -> bool:  # noqa: ASYNC109 - the poll's own bound
        """Wait until woken (``True``) or ``timeout`` seconds pass (``False``)."""
        if not self.event.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.event.wait()
        return self.event.is_set()


@dataclass(frozen=True, slots=True)
class _Settled:
    """A remembered answer: the manifest's sequence (0: nothing) and the view it held in."""

    sequence: int
    #: What the view showed waiting for the agent (``EnvironmentView.waiting``), if anything.
    waiting: int | None
    #: The view's desired bundle and moving deployments, or ``None`` for a manifest handed over
    #: here (it holds while the view shows it waiting for the agent, whatever else moves).
    desired: str | None
    moving: frozenset[str] | None
    expires: float


@dataclass(slots=True, eq=False)
class _Environment:
    org_id: str
    env_id: str
    waiters: set[Waiter] = field(default_factory=set)
    #: Waiters not yet checked against a view read after they took their decision.
    fresh: set[Waiter] = field(default_factory=set)
    task: asyncio.Task[None] | None = None


class AgentSignals:
    """Wakes this process's long polls; remembers settled agents. See the module docstring."""

    def __init__(
        self,
        fleet: FleetView | None = None,
        interval: float = 1.0,
        settled_seconds: float = 60.0,
        manifests: Callable[[Mapping[str, int]], Awaitable[Mapping[str, tuple[int, Any]]]]
        | None = None,
    ) -> None:
        """``manifests`` reads the manifests a view shows waiting (agent id -> sequence) and
        answers ``{agent_id: (sequence, envelope)}`` for the ones polls may answer with."""
        self.fleet = fleet
        self.manifests = manifests
        self.interval = max(0.05, interval)
        self.settled_seconds = settled_seconds
        self._waiters: dict[str, set[Waiter]] = {}
        self._environments: dict[str, _Environment] = {}
        self._settled: dict[str, _Settled] = {}

    # --- waking -----------------------------------------------------------------------------

    def notify(self, agent_ids: Iterable[str]) -> None:
        """Wake the polls of these agents (a manifest was issued to them here)."""
        for agent_id in agent_ids:
            self._settled.pop(agent_id, None)
            for waiter in self._waiters.get(agent_id, ()):
                waiter.event.set()

    def deliver(self, manifests: Mapping[str, tuple[int, Any]]) -> None:
        """Wake the polls of these agents with the manifest just issued to each (committed)."""
        for agent_id, manifest in manifests.items():
            self._settled.pop(agent_id, None)
            for waiter in self._waiters.get(agent_id, ()):
                if waiter.delivered is None or waiter.delivered[0] < manifest[0]:
                    waiter.delivered, waiter.read = manifest, False
                waiter.event.set()

    @contextlib.contextmanager
    def waiter(self, agent_id: str) -> Iterator[Waiter]:
        """Register a poll before it decides, so a notification meanwhile is not lost."""
        waiter = Waiter(agent_id)
        self._waiters.setdefault(agent_id, set()).add(waiter)
        try:
            yield waiter
        finally:
            waiters = self._waiters.get(agent_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[agent_id]

    @contextlib.contextmanager
    def watching(self, waiter: Waiter, org_id: str, env_id: str) -> Iterator[None]:
        """While the poll waits, wake it when the environment's view shows it something new.

        Without a fleet view (a bare worker), only :meth:`notify` wakes polls.
        """
        if self.fleet is None:
            yield
            return
        env = self._environments.get(env_id)
        if env is None:
            env = self._environments[env_id] = _Environment(org_id, env_id)
        env.waiters.add(waiter)
        env.fresh.add(waiter)
        if env.task is None or env.task.done():
            env.task = asyncio.create_task(self._watch(env), name=f"long polls of {env_id}")
        try:
            yield
        finally:
            env.waiters.discard(waiter)
            env.fresh.discard(waiter)

    async def _watch(self, env: _Environment) -> None:
        """Check the environment's waiting polls against each view read, until none wait."""
        assert self.fleet is not None  # noqa: S101 - only started with a fleet view
        last: EnvironmentView | None = None
        while env.waiters:
            await asyncio.sleep(self.interval)
            try:
                view = await self.fleet.environment(env.org_id, env.env_id)
            except Exception:  # noqa: BLE001 - polls time out on their own; try again next tick
                logger.warning("reading the view of environment %s failed", env.env_id)
                continue
            changed = (
                last is None
                or view.desired_digest != last.desired_digest
                or view.waiting != last.waiting
            )
            stale = [w for w in (env.waiters if changed else env.fresh) if w.stale_in(view)]
            env.fresh.clear()
            last = view
            if stale and self.manifests is not None:
                stale = await self._hand_over(env, stale, view)
            for waiter in stale:
                waiter.event.set()
        if self._environments.get(env.env_id) is env:
            del self._environments[env.env_id]

    async def _hand_over(
        self, env: _Environment, stale: list[Waiter], view: EnvironmentView
    ) -> list[Waiter]:
        """Give woken polls the manifests ``view`` shows waiting for them, read in one go.

        Polls with nothing to read (a new desired bundle) are woken first; the read is bounded
        (``2 * interval``, at least 1 s), and on failure or timeout the polls decide in full.
        Returns the polls still to wake.
        """
        assert self.manifests is not None  # noqa: S101 - only called with a reader
        wanted: dict[str, int] = {}
        reading: list[Waiter] = []
        for waiter in stale:
            sequence = view.waiting.get(waiter.agent_id)
            already = waiter.delivered is not None and waiter.delivered[0] >= (sequence or 0)
            if sequence is None or sequence <= waiter.sequence or already:
                waiter.event.set()  # issued here (handed over already), or nothing to read
                continue
            wanted[waiter.agent_id] = sequence
            reading.append(waiter)
        if not wanted:
            return []
        try:
            async with asyncio.timeout(max(1.0, 2 * self.interval)):
                found = await self.manifests(wanted)
        except Exception:  # noqa: BLE001 - the polls decide in full instead
            logger.warning(
                "reading %d waiting manifest(s) of environment %s failed; the polls decide",
                len(wanted),
                env.env_id,
            )
            return reading
        for waiter in reading:
            manifest = found.get(waiter.agent_id)
            if manifest is not None and (
                waiter.delivered is None or waiter.delivered[0] < manifest[0]
            ):
                waiter.delivered = manifest
                waiter.read = True
        return reading

    # --- settled agents -----------------------------------------------------------------------

    def settle(self, waiter: Waiter, sequence: int, view: EnvironmentView) -> None:
        """A full decision, taken after ``view`` was read, answered ``sequence`` (0: nothing),
        and that answer holds until the agent acts or the view changes (``Served.stable``)."""
        waiting = view.waiting.get(waiter.agent_id)
        self._remember(waiter, sequence, waiting, view.desired_digest, view.moving)

    def settle_delivered(self, waiter: Waiter, sequence: int) -> None:
        """The manifest ``sequence`` issued here was handed to the agent's poll."""
        self._remember(waiter, sequence, sequence, None, None)

    def _remember(
        self,
        waiter: Waiter,
        sequence: int,
        waiting: int | None,
        desired: str | None,
        moving: frozenset[str] | None,
    ) -> None:
        # Not after a report meanwhile, nor a manifest issued meanwhile (the poll is woken and
        # looks again).
        if self.settled_seconds <= 0 or waiter.acted or waiter.event.is_set():
            return
        if len(self._settled) >= _MAX_SETTLED:
            self._settled.clear()
        expires = time.monotonic() + self.settled_seconds
        self._settled[waiter.agent_id] = _Settled(sequence, waiting, desired, moving, expires)

    def settled(self, agent_id: str, sequence: int, view: EnvironmentView) -> bool:
        """Whether a recent answer for ``agent_id`` was ``sequence`` and still holds in ``view``."""
        found = self._settled.get(agent_id)
        if found is None:
            return False
        if found.expires < time.monotonic():
            del self._settled[agent_id]
            return False
        if found.sequence != sequence or view.waiting.get(agent_id) != found.waiting:
            return False
        return found.moving is None or (
            found.desired == view.desired_digest and found.moving == view.moving
        )

    def forget(self, agent_id: str) -> None:
        """The agent acted (it reported): take its next decisions in full."""
        self._settled.pop(agent_id, None)
        for waiter in self._waiters.get(agent_id, ()):
            waiter.acted = True

    async def shutdown(self) -> None:
        """Stop the watchers (their polls end on their own bounds)."""
        tasks = [env.task for env in self._environments.values() if env.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._environments.clear()
