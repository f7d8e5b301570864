"""Content-addressed storage of upload bytes: the `BlobStore` seam and the local-disk store.

A blob's key is the sha256 of its bytes, so storing is idempotent, keys can never name a path
of the caller's choosing, and every read proves it returns what was stored.
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
import hashlib
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final, final

from models.errors import CodedError

__all__ = [
    "BlobCorrupt",
    "BlobError",
    "BlobNotFound",
    "BlobStore",
    "InvalidBlobKey",
    "LocalBlobStore",
    "check_key",
]

logger = logging.getLogger(__name__)

_KEY: Final = re.compile(r"[0-9a-f]{64}")
_TEMP_PREFIX: Final = ".tmp-"
_CHUNK: Final = 1 << 20


class BlobError(CodedError):
    """The blob store could not complete the request."""

    code = "blob.error"
    # keys come from our own records, never from a caller: any failure here is the store's
    kind = "unavailable"

    def __str__(self) -> str:
        # KeyError would otherwise print the repr of its argument.
        return self.detail


class BlobNotFound(BlobError, KeyError):
    """No blob is stored under this key."""

    code = "blob.not_found"


class BlobCorrupt(BlobError):
    """The stored bytes no longer match their sha256."""

    code = "blob.corrupt"


class InvalidBlobKey(BlobError, ValueError):
    """A blob key must be a sha256: 64 lowercase hexadecimal characters."""

    code = "blob.invalid_key"


def check_key(sha256: object) -> str:
    """`sha256` itself if it is a canonical key; InvalidBlobKey otherwise.

    Keys become file names and object names, so nothing but the canonical form gets through:
    no separators, no dots, no upper case (which would alias on case-insensitive disks).
    """
    if not isinstance(sha256, str) or _KEY.fullmatch(sha256) is None:
        raise InvalidBlobKey()
    return sha256


class BlobStore(abc.ABC):
    """Bytes stored under the sha256 of their content.

    The public methods validate keys and verify digests for every backend; a backend writes
    only `_put`, `_get` and `_exists`.
    """

    @final
    def put(self, data: bytes) -> str:
        """Store `data` (idempotent) and return its key, the hex sha256 of the bytes."""
        key = hashlib.sha256(data).hexdigest()
        self._put(key, data)
        return key

    @final
    def put_many(self, items: Sequence[bytes]) -> list[str]:
        """Store several blobs (a batch job's batch); durable, like `put`, once it returns."""
        keyed = [(hashlib.sha256(data).hexdigest(), data) for data in items]
        self._put_many(keyed)
        return [key for key, _ in keyed]

    def _put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Store each (key, data); a backend may make the whole batch durable at once."""
        for key, data in items:
            self._put(key, data)

    @final
    def get(self, sha256: str) -> bytes:
        """The bytes stored under `sha256`; BlobNotFound if none, BlobCorrupt if they changed."""
        key = check_key(sha256)
        data = self._get(key)
        if hashlib.sha256(data).hexdigest() != key:
            # The key is a content hash, not content: safe to log, and needed to find the file.
            logger.error("blob failed its digest check", extra={"sha256": key})
            raise BlobCorrupt(f"The blob {key} no longer matches its sha256.")
        return data

    @final
    def exists(self, sha256: str) -> bool:
        """Whether a blob is stored under `sha256` (its content is not verified)."""
        return self._exists(check_key(sha256))

    def path_for(self, sha256: str) -> Path | None:
        """Where the blob under `sha256` lives on a local filesystem; None if it does not."""
        check_key(sha256)
        return None

    @abc.abstractmethod
    def _put(self, key: str, data: bytes) -> None:
        """Store `data` under `key` (already its sha256), atomically: all or nothing."""

    @abc.abstractmethod
    def _get(self, key: str) -> bytes:
        """The bytes under `key`, or raise BlobNotFound."""

    @abc.abstractmethod
    def _exists(self, key: str) -> bool:
        """Whether anything is stored under `key`."""


class LocalBlobStore(BlobStore):
    """Blobs as files `root/ab/cd/<sha256>`: two levels of fan-out keep directories small.

    Writes go to a temporary file in the target directory, are fsynced, then renamed over the
    final name, so a reader sees a whole blob or none.  Files are created 0600: they may hold
    the very content under review.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path_for(self, sha256: str) -> Path:
        key = check_key(sha256)
        return self.root / key[:2] / key[2:4] / key

    def remove_stale_temp_files(self, *, older_than_s: float = 3600.0) -> int:
        """Delete temporary files left by writers that died mid-put; return how many.

        A temp file younger than `older_than_s` may belong to a put still in flight.
        """
        cutoff = time.time() - older_than_s
        removed = 0
        for tmp in self.root.glob(f"??/??/{_TEMP_PREFIX}*"):
            with contextlib.suppress(FileNotFoundError):
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed += 1
        return removed

    def _put(self, key: str, data: bytes) -> None:
        path = self.path_for(key)
        if _has_content(path, data):
            return
        # Also reached when a stored blob was damaged: the rename below repairs it, and a
        # concurrent reader sees the old file or the new one, never a mix.
        _make_dirs(path.parent)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=_TEMP_PREFIX + key[:16] + "-")
        try:
            with open(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
        _fsync_dir(path.parent)  # the rename itself must survive a power cut

    def _put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        # Each blob is written and renamed as in `_put`, but made durable once for the whole
        # batch: one file-system sync costs about what two fsyncs of one blob do (measured on
        # ext4: 0.4 ms a blob instead of 4-5).  Until it returns no decision names these blobs,
        # and a blob a crash left damaged is rewritten by the next put of its content.
        written: list[Path] = []
        folders: set[Path] = set()
        for key, data in items:
            path = self.path_for(key)
            if _has_content(path, data):
                continue
            folders.update(_make_dirs(path.parent, sync=False))
            fd, tmp_name = tempfile.mkstemp(dir=path.parent,
                                            prefix=_TEMP_PREFIX + key[:16] + "-")
            try:
                with open(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp_name, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp_name)
                raise
            written.append(path)
            folders.add(path.parent)
        if written and not _sync_file_system(self.root):
            for path in written:
                with path.open("rb") as fh:
                    os.fsync(fh.fileno())
            for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
                _fsync_dir(folder)

    def _get(self, key: str) -> bytes:
        try:
            return self.path_for(key).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f"No blob is stored under {key}.") from None

    def _exists(self, key: str) -> bool:
        return self.path_for(key).is_file()


def _has_content(path: Path, data: bytes) -> bool:
    # Compared byte for byte rather than trusted by name: a damaged blob is rewritten by the
    # next put of the same content instead of failing every read forever.
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return False
    with fh:
        if os.fstat(fh.fileno()).st_size != len(data):
            return False
        view = memoryview(data)
        for offset in range(0, len(data), _CHUNK):
            if fh.read(_CHUNK) != view[offset : offset + _CHUNK]:
                return False
    return True


def _make_dirs(directory: Path, *, sync: bool = True) -> list[Path]:
    # Like mkdir(parents=True), but each new directory's entry is fsynced into its parent, so a
    # blob whose rename was made durable cannot vanish with the directory holding it.  Without
    # `sync`, the parents to fsync are returned (the caller syncs them with its batch).
    missing: list[Path] = []
    current = directory
    while not current.is_dir() and current.parent != current:
        missing.append(current)
        current = current.parent
    parents: list[Path] = []
    for new in reversed(missing):
        try:
            new.mkdir()
        except FileExistsError:
            continue  # another writer made it first
        if sync:
            _fsync_dir(new.parent)
        else:
            parents.append(new.parent)
    return parents


def _sync_file_system(path: Path) -> bool:
    """Flush everything written to the file system holding `path` (Linux `syncfs`); False
    where that call does not exist, and the caller fsyncs file by file."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):  # pragma: no cover - a libc without syncfs
        return False
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)
    return True


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":  # pragma: no cover - directories cannot be fsynced elsewhere
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
