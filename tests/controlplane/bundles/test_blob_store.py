"""The blob store's small-blob reads: served from memory, yet never after the blob is gone.

To tell a read from memory from a read from disk, a test swaps the file's bytes on disk for
others of the same size (a blob's content never changes in use; this is a probe only).
"""

from __future__ import annotations

from pathlib import Path

from controlplane.blobs.store import BlobStore


def _swap_on_disk(store: BlobStore, digest: str) -> bytes:
    path = store.path_for(digest)
    swapped = bytes(255 - b for b in path.read_bytes())
    path.write_bytes(swapped)
    return swapped


def test_a_small_blob_is_read_from_disk_once_then_from_memory(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest, _ = store.put_bytes(b"bundle")
    assert store.read_small(digest) == b"bundle"
    _swap_on_disk(store, digest)
    assert store.read_small(digest) == b"bundle"
    assert store.hot_bytes == len(b"bundle")


def test_a_deleted_blob_is_not_served_from_memory(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest, _ = store.put_bytes(b"bundle")
    assert store.read_small(digest) == b"bundle"
    store.path_for(digest).unlink()  # deleted by another process (its garbage collection)
    assert store.read_small(digest) is None
    assert store.hot_bytes == 0


def test_deleting_through_the_store_forgets_the_copy(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest, _ = store.put_bytes(b"bundle")
    store.read_small(digest)
    assert store.delete(digest)
    assert store.hot_bytes == 0
    store.put_bytes(b"bundle")  # the same content again
    swapped = _swap_on_disk(store, digest)
    assert store.read_small(digest) == swapped  # read from disk: nothing was left in memory


def test_a_blob_over_the_limit_is_left_to_stream(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest, _ = store.put_bytes(b"x" * 101)
    assert store.read_small(digest, limit=100) is None
    assert store.hot_bytes == 0
    assert store.read_small(digest, limit=101) == b"x" * 101


def test_memory_holds_the_most_recently_used_within_its_budget(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, hot_bytes=250)
    a, _ = store.put_bytes(b"a" * 100)
    b, _ = store.put_bytes(b"b" * 100)
    c, _ = store.put_bytes(b"c" * 100)
    store.read_small(a)
    store.read_small(b)
    store.read_small(a)  # a is now the most recent
    store.read_small(c)  # over budget: b, the least recent, goes
    assert store.hot_bytes == 200
    swapped = {digest: _swap_on_disk(store, digest) for digest in (a, b, c)}
    assert store.read_small(a) == b"a" * 100
    assert store.read_small(c) == b"c" * 100
    assert store.read_small(b) == swapped[b]  # evicted: read from disk again


def test_a_blob_larger_than_the_whole_budget_is_served_but_not_kept(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, hot_bytes=50)
    digest, _ = store.put_bytes(b"y" * 80)
    assert store.read_small(digest) == b"y" * 80
    assert store.hot_bytes == 0


def test_a_blob_that_does_not_exist_reads_as_none(tmp_path: Path) -> None:
    assert BlobStore(tmp_path).read_small("sha256:" + "0" * 64) is None
