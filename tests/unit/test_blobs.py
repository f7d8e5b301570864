"""The blob store: content-addressed, idempotent, traversal-proof, corruption-evident, atomic."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.blobs import (
    BlobCorrupt,
    BlobError,
    BlobNotFound,
    BlobStore,
    InvalidBlobKey,
    LocalBlobStore,
    check_key,
)

DATA = b"\xff\xd8\xff not really a jpeg, but bytes are bytes"
KEY = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "var" / "blobs")


def _all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


# ---- the basics ------------------------------------------------------------------------------
def test_put_returns_sha256_and_get_round_trips(store: LocalBlobStore) -> None:
    assert store.put(DATA) == KEY
    assert store.get(KEY) == DATA
    assert store.exists(KEY)


def test_layout_is_two_level_fan_out(store: LocalBlobStore) -> None:
    store.put(DATA)
    expected = store.root / KEY[:2] / KEY[2:4] / KEY
    assert store.path_for(KEY) == expected
    assert _all_files(store.root) == [expected]
    assert expected.read_bytes() == DATA


def test_blob_files_are_private_to_the_service(store: LocalBlobStore) -> None:
    store.put(DATA)
    assert stat.S_IMODE(store.path_for(KEY).stat().st_mode) == 0o600


def test_empty_blob(store: LocalBlobStore) -> None:
    key = store.put(b"")
    assert key == hashlib.sha256(b"").hexdigest()
    assert store.get(key) == b""


def test_put_is_idempotent_and_does_not_rewrite(store: LocalBlobStore) -> None:
    store.put(DATA)
    before = store.path_for(KEY).stat()
    assert store.put(DATA) == KEY
    after = store.path_for(KEY).stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert _all_files(store.root) == [store.path_for(KEY)]


def test_put_many_stores_a_batch_like_put(store: LocalBlobStore) -> None:
    items = [DATA, b"second", DATA, b""]  # a repeat inside the batch is stored once
    keys = store.put_many(items)
    assert keys == [hashlib.sha256(d).hexdigest() for d in items]
    for key, data in zip(keys, items, strict=True):
        assert store.get(key) == data
        assert stat.S_IMODE(store.path_for(key).stat().st_mode) == 0o600
    assert len(_all_files(store.root)) == 3  # no temporary file left behind
    before = store.path_for(KEY).stat()
    store.put_many([DATA])
    after = store.path_for(KEY).stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_put_many_repairs_a_damaged_blob(store: LocalBlobStore) -> None:
    store.put(DATA)
    store.path_for(KEY).write_bytes(DATA[:4])
    store.put_many([b"other", DATA])
    assert store.get(KEY) == DATA


def test_put_many_is_durable_without_syncfs(store: LocalBlobStore,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the file system cannot be synced at once, every new file and every directory
    that gained an entry is fsynced before put_many returns."""
    import pipeline.blobs as blobs

    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(blobs, "_sync_file_system", lambda path: False)
    monkeypatch.setattr(os, "fsync", spy)
    keys = store.put_many([DATA, b"second"])
    files = {str(store.path_for(k)) for k in keys}
    folders = {str(store.path_for(k).parent) for k in keys}
    assert files <= set(synced) and folders <= set(synced)
    assert str(store.root) in synced  # the new fan-out directories' entries too


def test_put_many_reports_a_failed_sync(store: LocalBlobStore,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.blobs as blobs

    def boom(path: Path) -> bool:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(blobs, "_sync_file_system", boom)
    with pytest.raises(OSError):
        store.put_many([DATA])


def test_missing_blob(store: LocalBlobStore) -> None:
    assert not store.exists(KEY)
    with pytest.raises(BlobNotFound) as info:
        store.get(KEY)
    assert info.value.code == "blob.not_found"
    assert isinstance(info.value, KeyError)  # callers may treat the store like a mapping
    assert KEY in str(info.value)


# ---- keys --------------------------------------------------------------------------------
BAD_KEYS = [
    "",
    "../../etc/passwd",
    "../" + "a" * 61,
    "ab/cd/" + "a" * 58,
    "/" + "a" * 63,
    "a" * 63,
    "a" * 65,
    "A" * 64,  # upper case would alias the same blob on case-insensitive filesystems
    "g" * 64,
    "a" * 64 + "\n",
    "\u0430" * 64,  # Cyrillic a
    "a" * 32 + "\x00" + "a" * 31,
    KEY.encode(),
    None,
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_non_canonical_keys_are_refused_everywhere(store: LocalBlobStore, key: object) -> None:
    operations: list[Callable[[Any], object]] = [
        store.get,
        store.exists,
        store.path_for,
        check_key,
    ]
    for operation in operations:
        with pytest.raises(InvalidBlobKey) as info:
            operation(key)
        assert info.value.code == "blob.invalid_key"
        assert isinstance(info.value, ValueError)
    assert not store.root.exists()  # nothing was touched on the way to refusing


def test_traversal_cannot_read_outside_the_root(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"not for you")
    store = LocalBlobStore(tmp_path / "blobs")
    with pytest.raises(InvalidBlobKey):
        store.get("../../secret")


# ---- corruption ------------------------------------------------------------------------------
def test_flipped_byte_is_detected(store: LocalBlobStore) -> None:
    store.put(DATA)
    path = store.path_for(KEY)
    damaged = bytearray(path.read_bytes())
    damaged[5] ^= 0x01
    path.write_bytes(bytes(damaged))
    with pytest.raises(BlobCorrupt) as info:
        store.get(KEY)
    assert info.value.code == "blob.corrupt"
    assert isinstance(info.value, BlobError)


def test_truncated_blob_is_detected(store: LocalBlobStore) -> None:
    store.put(DATA)
    path = store.path_for(KEY)
    path.write_bytes(DATA[:10])
    with pytest.raises(BlobCorrupt):
        store.get(KEY)


@pytest.mark.parametrize("damage", ["flip", "truncate", "replace"])
def test_putting_the_content_again_repairs_a_damaged_blob(
    store: LocalBlobStore, damage: str
) -> None:
    store.put(DATA)
    path = store.path_for(KEY)
    if damage == "flip":
        path.write_bytes(DATA[:-1] + bytes([DATA[-1] ^ 0xFF]))
    elif damage == "truncate":
        path.write_bytes(DATA[:3])
    else:
        path.write_bytes(b"x" * len(DATA))
    assert store.put(DATA) == KEY
    assert store.get(KEY) == DATA
    assert _all_files(store.root) == [path]


def test_large_blob_compares_in_chunks(store: LocalBlobStore) -> None:
    big = os.urandom(3 * (1 << 20) + 17)
    key = store.put(big)
    path = store.path_for(key)
    before = path.stat().st_ino
    assert store.put(big) == key and path.stat().st_ino == before
    damaged = bytearray(big)
    damaged[-1] ^= 0xFF  # in the last, short chunk
    path.write_bytes(bytes(damaged))
    store.put(big)
    assert store.get(key) == big


# ---- atomicity -------------------------------------------------------------------------------
@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_failed_put_leaves_no_blob_and_no_temp_file(
    store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, boom)
    with pytest.raises(OSError):
        store.put(DATA)
    monkeypatch.undo()
    assert not store.exists(KEY)
    assert _all_files(store.root) == []


def test_a_failed_write_leaves_no_temp_file(
    store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_mkstemp = tempfile.mkstemp

    def read_only_mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        # The temp file is created, but writing to it fails as a full or failing disk would.
        fd, name = real_mkstemp(*args, **kwargs)
        os.close(fd)
        return os.open(name, os.O_RDONLY), name

    monkeypatch.setattr(tempfile, "mkstemp", read_only_mkstemp)
    with pytest.raises(OSError):
        store.put(DATA)
    monkeypatch.undo()
    assert not store.exists(KEY)
    assert _all_files(store.root) == []


def test_a_failed_repair_keeps_the_old_file_whole(
    store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put(DATA)
    path = store.path_for(KEY)
    path.write_bytes(DATA[:4])  # damaged: the next put of DATA will try to repair it

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        store.put(DATA)
    monkeypatch.undo()
    assert path.read_bytes() == DATA[:4]  # untouched: no torn mix of old and new
    assert _all_files(store.root) == [path]


def test_stale_temp_files_are_swept(store: LocalBlobStore) -> None:
    store.put(DATA)
    directory = store.path_for(KEY).parent
    stale, fresh = directory / ".tmp-dead-writer", directory / ".tmp-live-writer"
    stale.write_bytes(b"half a blob")
    fresh.write_bytes(b"a blob in flight")
    old = os.stat(stale).st_mtime - 7200
    os.utime(stale, (old, old))
    assert store.remove_stale_temp_files(older_than_s=3600) == 1
    assert not stale.exists() and fresh.exists()
    assert store.get(KEY) == DATA


# ---- the interface -----------------------------------------------------------------------
class _DictStore(BlobStore):
    """The smallest backend: shows what the base class does for every store."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def _put(self, key: str, data: bytes) -> None:
        self.blobs[key] = data

    def _get(self, key: str) -> bytes:
        try:
            return self.blobs[key]
        except KeyError:
            raise BlobNotFound() from None

    def _exists(self, key: str) -> bool:
        return key in self.blobs


def test_the_interface_cannot_be_instantiated() -> None:
    with pytest.raises(TypeError):
        BlobStore()  # type: ignore[abstract]


def test_every_backend_gets_key_checks_and_digest_verification() -> None:
    store = _DictStore()
    key = store.put(DATA)
    assert store.get(key) == DATA
    assert store.path_for(key) is None
    store.blobs[key] = b"tampered"
    with pytest.raises(BlobCorrupt):
        store.get(key)
    with pytest.raises(InvalidBlobKey):
        store.exists("../" + key[3:])
    with pytest.raises(BlobNotFound):
        store.get("0" * 64)
