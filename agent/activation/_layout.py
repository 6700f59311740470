"""The files an activation manages: bundle directories, the ``current`` link, the live spec."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from agent.activation._archive import SPEC_NAME, check_bundle_dir
from agent.activation._fs import (
    JOURNAL_FILE,
    OUTCOME_FILE,
    clear_file,
    point_link,
    remove_link,
    remove_tree,
    write_atomic,
)
from agent.activation._model import ActivationRefused
from agent.activation._verify import digest_hex

if TYPE_CHECKING:
    from pathlib import Path

    from agent.config import AgentConfig
    from agent.state import AgentState

__all__ = ["Layout"]

_SPEC_MODE: Final = 0o644

logger = logging.getLogger("byteor.agent.activation")


class Layout:
    """Paths under ``settings.state_dir`` and the live spec file, and the moves between bundles.

    ``bundles/<hex>/`` (unpacked bundles), ``current`` (a relative symlink to the active one),
    ``downloads/`` (partial archives), ``activation.json`` (the journal),
    ``deployment_outcome.json`` (the last outcome not yet reported) and ``spec.kv.unmanaged`` (a
    spec file found before the agent managed it, kept until a first activation succeeds).
    """

    def __init__(self, settings: AgentConfig) -> None:
        """Derive the paths from ``settings`` (no I/O)."""
        self.max_bundle_bytes = settings.max_bundle_bytes
        self.spec = settings.spec
        self.state_dir = settings.state_dir
        self.bundles_dir = self.state_dir / "bundles"
        self.downloads_dir = self.state_dir / "downloads"
        self.current_link = self.state_dir / "current"
        self.journal_path = self.state_dir / JOURNAL_FILE
        self.outcome_path = self.state_dir / OUTCOME_FILE
        self.spec_backup_path = self.state_dir / "spec.kv.unmanaged"

    def bundle_dir(self, digest: str) -> Path:
        """The directory of the bundle with ``digest`` (``sha256:<hex>``)."""
        return self.bundles_dir / digest_hex(digest)

    def reusable(self, directory: Path) -> bool:
        """Whether ``directory`` holds a complete bundle; a damaged one is removed."""
        if directory.is_symlink():
            remove_tree(directory)
            return False
        if not directory.is_dir():
            return False
        try:
            check_bundle_dir(directory, self.max_bundle_bytes)
        except ActivationRefused as exc:
            logger.warning("unpacked bundle %s is damaged (%s); unpacking again", directory, exc)
            remove_tree(directory)
            return False
        return True

    def switch(self, directory: Path) -> None:
        """Point ``current`` at ``directory`` and install its spec, each atomically."""
        point_link(self.current_link, f"{self.bundles_dir.name}/{directory.name}")
        write_atomic(self.spec, (directory / SPEC_NAME).read_bytes(), _SPEC_MODE)

    def backup_unmanaged_spec(self) -> bool:
        """Keep a spec file the agent did not install, to restore it if activation fails."""
        if not self.spec.is_file():
            return False
        write_atomic(self.spec_backup_path, self.spec.read_bytes())
        return True

    def restore(self, previous_digest: str | None, *, spec_backup: bool) -> Path | None:
        """Make ``previous_digest`` active again (or nothing); return its directory."""
        if previous_digest is not None:
            previous = self.bundle_dir(previous_digest)
            if previous.is_dir() and not previous.is_symlink():
                self.switch(previous)
                logger.info("bundle %s is active again", previous_digest)
                return previous
            logger.error(
                "the previous bundle %s is missing; leaving no bundle active", previous_digest
            )
        remove_link(self.current_link)
        if spec_backup and self.spec_backup_path.is_file():
            write_atomic(self.spec, self.spec_backup_path.read_bytes(), _SPEC_MODE)
        else:
            remove_link(self.spec)
        clear_file(self.spec_backup_path)
        return None

    def cleanup_temporary(self) -> None:
        """Remove partial downloads and unpacking directories."""
        remove_tree(self.downloads_dir)
        if self.bundles_dir.is_dir():
            for entry in self.bundles_dir.iterdir():
                if entry.name.startswith("."):
                    remove_tree(entry)

    def prune(self, state: AgentState) -> None:
        """Keep only the active and the previous bundle."""
        if not self.bundles_dir.is_dir():
            return
        keep = {
            digest_hex(digest)
            for digest in (state.active_bundle_digest, state.previous_bundle_digest)
            if digest is not None
        }
        for entry in self.bundles_dir.iterdir():
            if entry.name not in keep:
                remove_tree(entry)
