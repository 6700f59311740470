"""Upload spooled artifacts to the control plane, oldest first, signed with the agent's key.

One round (:meth:`Uploader.upload_pending`):

1. files finished in ``<state_dir>/outbox/`` are moved into the spool (see :mod:`agent.spool`
   for the kind rule);
2. every spool entry, oldest first, is sent with metadata signed by
   :func:`shared.artifacts.sign_metadata` and its idempotency key chosen at spool time, so a
   retried upload is never stored twice;
3. an entry is deleted only after the control plane acknowledged it (201 stored, 200 already
   stored). A permanent rejection (400, 413 and other 4xx about the request itself) moves it to
   ``spool/rejected/`` with the reason logged. A transient failure (network, 5xx, 429 after the
   client's own retries) or a credential problem (401, 403, 404) ends the round; the entry is
   retried next round.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final

from agent.errors import (
    AgentError,
    Forbidden,
    InvalidResponse,
    NotFoundError,
    RequestRejected,
    Unauthorized,
)
from agent.identity import public_key_b64
from agent.spool import Spool, SpoolEntry
from agent.state import ensure_state_dir
from shared.artifacts import MAX_ARTIFACT_BYTES, ArtifactMetadata, sign_metadata

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.client import ControlPlaneClient
    from agent.config import AgentConfig
    from agent.state import AgentState

__all__ = ["OUTBOX_DIR", "SPOOL_DIR", "Uploader", "open_spool", "outbox_dir"]

SPOOL_DIR: Final = "spool"
OUTBOX_DIR: Final = "outbox"

logger = logging.getLogger("byteor.agent.uploads")


def open_spool(state_dir: Path, max_bytes: int, max_files: int) -> Spool:
    """Open the spool of the agent whose state lives in ``state_dir`` (``<state_dir>/spool``)."""
    ensure_state_dir(state_dir)
    return Spool(state_dir / SPOOL_DIR, max_bytes, max_files)


def outbox_dir(state_dir: Path) -> Path:
    """The outbox where pipelines drop files to upload (``<state_dir>/outbox``)."""
    return state_dir / OUTBOX_DIR


class Uploader:
    """Drains the spool into the control plane; one round per :meth:`upload_pending` call."""

    def __init__(
        self,
        settings: AgentConfig,
        client: ControlPlaneClient,
        spool: Spool,
        identity: Ed25519PrivateKey,
        state_getter: Callable[[], AgentState | None],
        on_identity_registered: Callable[[], None] | None = None,
    ) -> None:
        """Create the uploader (no I/O).

        Args:
            settings: Where the outbox is (``state_dir``).
            client: The control plane client, with credentials set.
            spool: The spool to drain.
            identity: The agent's signing key (:func:`agent.identity.load_or_create_identity`).
            state_getter: Returns the agent's current state (``None`` before enrollment).
            on_identity_registered: Called once the control plane holds the identity key (the
                daemon records it in the state file).
        """
        self._settings = settings
        self._client = client
        self.spool = spool
        self._identity = identity
        self._state = state_getter
        self._on_identity_registered = on_identity_registered
        self._identity_refused = False
        self.outbox = outbox_dir(settings.state_dir)

    def sign(self, entry: SpoolEntry, agent_id: str) -> ArtifactMetadata:
        """The signed upload metadata of ``entry`` as agent ``agent_id``."""
        metadata = ArtifactMetadata(
            agent_id=agent_id,
            kind=entry.kind,
            sha256=entry.sha256,
            size=entry.size,
            captured_at=entry.captured_at,
            idempotency_key=entry.idempotency_key,
            filename=entry.filename,
            deployment_id=entry.deployment_id,
            spec_hash=entry.spec_hash,
        )
        return sign_metadata(metadata, self._identity)

    async def ingest_outbox(self) -> int:
        """Move finished outbox files into the spool; returns how many were spooled."""
        state = self._state()
        deployment_id = state.active_deployment_id if state else None
        spec_hash = state.active_spec_hash if state else None
        try:
            await asyncio.to_thread(self.outbox.mkdir, mode=0o700, parents=True, exist_ok=True)
            added = await asyncio.to_thread(
                self.spool.ingest_outbox,
                self.outbox,
                deployment_id=deployment_id,
                spec_hash=spec_hash,
            )
        except OSError as exc:
            logger.warning("cannot ingest the outbox %s: %s", self.outbox, exc)
            return 0
        return len(added)

    async def upload_pending(self) -> int:
        """Ingest the outbox, then upload spooled entries oldest first until done or failing.

        Never raises for control plane or spool failures (they are logged).

        Returns:
            How many entries the control plane acknowledged this round.
        """
        await self.ingest_outbox()
        state = self._state()
        if state is None or self._client.agent_id is None:
            return 0
        agent_id = self._client.agent_id
        try:
            entries = await asyncio.to_thread(self.spool.entries)
        except OSError as exc:
            logger.warning("cannot list the spool: %s", exc)
            return 0
        if entries and not state.identity_registered and not await self._register_identity():
            return 0
        sent = 0
        for entry in entries:
            try:
                outcome = await self._upload_one(entry, agent_id)
            except OSError as exc:
                logger.warning("spool error while uploading %s: %s", entry.entry_id, exc)
                return sent
            if outcome is None:
                return sent
            sent += outcome
        return sent

    async def _register_identity(self) -> bool:
        """Make sure the control plane holds the identity key; ``False`` keeps the spool as is.

        Agents enrolled with a token sent the key at enrollment; agents on pre-provisioned
        credentials register it here, once, before their first upload.
        """
        try:
            await self._client.register_identity(public_key_b64(self._identity))
        except RequestRejected as exc:
            if not self._identity_refused:  # said once; later rounds retry quietly
                self._identity_refused = True
                logger.error(  # noqa: TRY400 - an expected refusal, not a crash
                    "the control plane holds another identity key for this agent (%s); uploads "
                    "stay spooled until the agent is deleted and the host enrolled again",
                    exc.detail or exc,
                )
            return False
        except AgentError as exc:
            logger.warning("cannot register the identity key yet (%s); retrying next round", exc)
            return False
        logger.info("registered this agent's identity key with the control plane")
        if self._on_identity_registered is not None:
            self._on_identity_registered()
        return True

    async def _upload_one(self, entry: SpoolEntry, agent_id: str) -> int | None:
        """1 if acknowledged, 0 if rejected (round goes on), ``None`` to end the round."""
        if entry.size > MAX_ARTIFACT_BYTES:
            await self._reject(entry, f"{entry.size} bytes exceed the upload limit")
            return 0
        metadata = self.sign(entry, agent_id)
        data = self.spool.data_path(entry.entry_id)
        if await asyncio.to_thread(self.spool.record_attempt, entry.entry_id) is None:
            return 0  # removed meanwhile
        try:
            receipt, duplicate = await self._client.upload_artifact(metadata, data)
        except FileNotFoundError:
            logger.warning("spool entry %s lost its data; removing it", entry.entry_id)
            await asyncio.to_thread(self.spool.remove, entry.entry_id)
            return 0
        except (Unauthorized, Forbidden, NotFoundError) as exc:
            logger.warning("artifact upload refused (%s); will retry later", exc)
            return None
        except RequestRejected as exc:
            await self._reject(entry, f"{exc.status} {exc.detail or exc}")
            return 0
        except InvalidResponse as exc:
            logger.warning(
                "artifact %s: unexpected answer (%s); will retry (idempotent)", entry.entry_id, exc
            )
            return None
        except AgentError as exc:
            logger.warning(
                "artifact upload of %s failed (%s); retrying next round", entry.entry_id, exc
            )
            return None
        await asyncio.to_thread(self.spool.remove, entry.entry_id)
        logger.info(
            "uploaded %s artifact %s as %s%s (%d bytes)",
            entry.kind,
            entry.entry_id,
            receipt.artifact_id,
            " (already stored)" if duplicate else "",
            entry.size,
        )
        return 1

    async def _reject(self, entry: SpoolEntry, reason: str) -> None:
        target = await asyncio.to_thread(self.spool.reject, entry.entry_id, reason)
        logger.error(
            "artifact %s (%s, %s) rejected permanently: %s; kept in %s",
            entry.entry_id,
            entry.kind,
            entry.filename,
            reason,
            target or self.spool.rejected_dir,
        )
