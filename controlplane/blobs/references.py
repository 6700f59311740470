"""Which blobs rows still reference, so deletes can remove blobs nothing points at any more."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select

from controlplane.db.models import ArtifactRow, ConfigBundleRow, EnvironmentRow

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from controlplane.blobs.store import BlobStore

__all__ = ["collect_garbage", "digests_under"]


async def digests_under(
    session: AsyncSession, *, project_id: str | None = None, env_id: str | None = None
) -> set[str]:
    """Blob digests referenced by rows under a project or an environment."""
    found: set[str] = set()
    for column, env_column in (
        (ConfigBundleRow.digest, ConfigBundleRow.env_id),
        (ArtifactRow.digest, ArtifactRow.env_id),
    ):
        statement = select(column).where(column.is_not(None))
        if env_id is not None:
            statement = statement.where(env_column == env_id)
        elif project_id is not None:
            envs = select(EnvironmentRow.id).where(EnvironmentRow.project_id == project_id)
            statement = statement.where(env_column.in_(envs))
        found |= {d for d in await session.scalars(statement) if d}
    return found


async def collect_garbage(session: AsyncSession, blobs: BlobStore, digests: set[str]) -> int:
    """Delete those of ``digests`` that no row references any more; returns how many."""
    if not digests:
        return 0
    still = set(
        await session.scalars(
            select(ConfigBundleRow.digest).where(ConfigBundleRow.digest.in_(digests))
        )
    ) | set(
        await session.scalars(select(ArtifactRow.digest).where(ArtifactRow.digest.in_(digests)))
    )
    removed = 0
    for digest in digests - still:
        removed += blobs.delete(digest)
    return removed
