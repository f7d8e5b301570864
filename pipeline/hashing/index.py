"""The in-process bank index: bank entries' PDQ hashes in a faiss binary multi-hash index
(multi-index hashing, as HMA does), with removals, a quality floor, a match threshold, an exact
brute-force check, and a lock so that one index serves every API worker thread of a process.

Multi-index hashing cuts each 256-bit hash into 16 substrings of 16 bits and keeps one hash
table per substring.  Two hashes at most 15 bits apart agree exactly on at least one substring
(pigeonhole), so a lookup that probes each table with the query's own substring (`nflip=0`,
the default) finds every entry within 15 bits; entries 16-31 bits away are found when one
substring happens to agree (bench/banks_bench.py, a million random entries: 99.8% of those
16-23 bits away, 95% of those 24-31 away).  `exhaustive=True` also probes every one-bit
neighbour of each substring (`nflip=1`), which finds every entry within 31 bits by the same
argument, at roughly a tenth of the speed (docs/pdq.md).

faiss cannot remove from a multi-hash index, so a removal is a tombstone, filtered out of every
result, and the index is rebuilt without its tombstones once they pile up; lookups go on
against the old index while the new one is built.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import faiss
import numpy as np
import numpy.typing as npt

from pipeline.hashing.pdq import HASH_BITS, HASH_BYTES, MATCH_THRESHOLD, QUALITY_FLOOR, parse_hex

__all__ = ["Match", "PdqIndex"]

log = logging.getLogger(__name__)

#: substrings (hash tables) of the multi-hash index; 16 x 16 bits is HMA's choice for PDQ
NHASH: Final = 16
_BITS_PER_HASH: Final = HASH_BITS // NHASH
#: a removal rebuilds the index once tombstones reach this share of what it holds ...
REBUILD_RATIO: Final = 0.2
#: ... and at least this many (a small bank is not rebuilt on every removal)
REBUILD_MIN: Final = 1000

HashLike = bytes | str | npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True, order=True)
class Match:
    """A bank entry within the threshold of a query, and how many bits apart they are."""

    distance: int
    entry_id: int


class _RWLock:
    """Many readers or one writer; a waiting writer holds back new readers, so a stream of
    lookups cannot starve an add."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def as_codes(hashes: Iterable[HashLike] | npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Hashes (32 bytes, 64 hex digits, or rows of a uint8 array) as an (n, 32) uint8 array."""
    if isinstance(hashes, np.ndarray):
        arr = hashes
    else:
        rows = [_one(h) for h in hashes]
        arr = np.stack(rows) if rows else np.empty((0, HASH_BYTES), np.uint8)
    if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != HASH_BYTES:
        raise ValueError(f"hashes must be an (n, {HASH_BYTES}) uint8 array, not {arr.shape}")
    return np.ascontiguousarray(arr)


def _one(h: HashLike) -> npt.NDArray[np.uint8]:
    if isinstance(h, str):
        h = parse_hex(h)
    if isinstance(h, bytes):
        if len(h) != HASH_BYTES:
            raise ValueError(f"a PDQ hash is {HASH_BYTES} bytes, not {len(h)}")
        return np.frombuffer(h, dtype=np.uint8)
    return np.asarray(h, dtype=np.uint8).reshape(HASH_BYTES)


class _Generation:
    """One faiss index and what each of its positions holds; replaced whole by a rebuild.

    Position i of the faiss index is entry `ids[i]`; `dead[i]` marks a tombstone.  Both arrays
    grow by doubling, and only under the writer's lock."""

    def __init__(self, nflip: int) -> None:
        self.index: Any = faiss.IndexBinaryMultiHash(HASH_BITS, NHASH, _BITS_PER_HASH)
        self.index.nflip = nflip
        self.ids: npt.NDArray[np.int64] = np.empty(1024, np.int64)
        self.dead: npt.NDArray[np.bool_] = np.zeros(1024, np.bool_)
        self.size = 0
        self.n_dead = 0

    def append(self, ids: npt.NDArray[np.int64], codes: npt.NDArray[np.uint8]) -> None:
        need = self.size + len(ids)
        if need > len(self.ids):
            cap = max(need, 2 * len(self.ids))
            self.ids = np.resize(self.ids, cap)
            dead = np.zeros(cap, np.bool_)
            dead[: self.size] = self.dead[: self.size]
            self.dead = dead
        if len(ids):
            self.index.add(codes)
        self.ids[self.size : need] = ids
        self.size = need

    def live_positions(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.intp]:
        # a scan of every position (a few ms at a million): removals are rare, lookups are not
        hit = np.isin(self.ids[: self.size], ids) & ~self.dead[: self.size]
        return np.flatnonzero(hit)

    def codes(self, start: int, stop: int) -> npt.NDArray[np.uint8]:
        if stop <= start:
            return np.empty((0, HASH_BYTES), np.uint8)
        out: npt.NDArray[np.uint8] = self.index.storage.reconstruct_n(start, stop - start)
        return out


class PdqIndex:
    """Bank entries (id, PDQ hash, quality) and the lookup of a query hash within the threshold.

    Entry ids are the caller's (bank entry primary keys).  Adding an id the index already holds
    is a no-op, so a process may add its own new entries and also catch up from the database
    without doubling them.  Entries and queries below the quality floor never match: such
    entries are not indexed at all.  Every method is safe to call from many threads; lookups
    run concurrently with one another (faiss releases the GIL), an add or a removal briefly
    excludes them.
    """

    def __init__(
        self,
        *,
        threshold: int = MATCH_THRESHOLD,
        quality_floor: int = QUALITY_FLOOR,
        exhaustive: bool = False,
        rebuild_ratio: float = REBUILD_RATIO,
        rebuild_min: int = REBUILD_MIN,
    ) -> None:
        if not 0 <= threshold < HASH_BITS:
            raise ValueError(f"threshold must be 0..{HASH_BITS - 1}, not {threshold}")
        if not 0 <= quality_floor <= 100:
            raise ValueError(f"quality_floor must be 0..100, not {quality_floor}")
        if not 0 < rebuild_ratio <= 1 or rebuild_min < 0:
            raise ValueError("rebuild_ratio must be in (0, 1] and rebuild_min >= 0")
        self.threshold = threshold
        self.quality_floor = quality_floor
        self.exhaustive = exhaustive
        self.rebuild_ratio = rebuild_ratio
        self.rebuild_min = rebuild_min
        #: nflip = threshold // NHASH makes the lookup complete up to the threshold (pigeonhole)
        self.nflip = threshold // NHASH if exhaustive else 0
        self._lock = _RWLock()
        self._rebuilding = threading.Lock()
        self._gen = _Generation(self.nflip)
        #: the ids of live entries, for an O(1) "already indexed?" on every add
        self._live: set[int] = set()
        self.rebuilds = 0

    # ---- reading --------------------------------------------------------------------------
    def __len__(self) -> int:
        """Live entries (indexed and not removed)."""
        with self._lock.read():
            return len(self._live)

    def __contains__(self, entry_id: object) -> bool:
        with self._lock.read():
            return entry_id in self._live

    def stats(self) -> dict[str, int]:
        with self._lock.read():
            g = self._gen
            return {"entries": g.size - g.n_dead, "tombstones": g.n_dead, "positions": g.size,
                    "rebuilds": self.rebuilds}

    def search(
        self, query: HashLike, *, quality: int | None = None, threshold: int | None = None
    ) -> list[Match]:
        """Entries within the threshold of one hash, nearest first (ties by entry id)."""
        return self._search(_one(query)[None], quality, threshold, exact=False)[0]

    def search_many(
        self,
        queries: Iterable[HashLike] | npt.NDArray[np.uint8],
        *,
        quality: int | None = None,
        threshold: int | None = None,
    ) -> list[list[Match]]:
        """`search` for many hashes in one call (one faiss call: cheaper per hash)."""
        return self._search(queries, quality, threshold, exact=False)

    def search_any(
        self,
        queries: Iterable[HashLike] | npt.NDArray[np.uint8],
        *,
        quality: int | None = None,
        threshold: int | None = None,
    ) -> list[Match]:
        """Entries within the threshold of *any* of the hashes (an image's eight dihedral
        hashes), each once with its smallest distance."""
        best: dict[int, int] = {}
        for matches in self._search(queries, quality, threshold, exact=False):
            for m in matches:
                if m.distance < best.get(m.entry_id, HASH_BITS + 1):
                    best[m.entry_id] = m.distance
        return sorted(Match(d, e) for e, d in best.items())

    def exact_search_many(
        self,
        queries: Iterable[HashLike] | npt.NDArray[np.uint8],
        *,
        quality: int | None = None,
        threshold: int | None = None,
    ) -> list[list[Match]]:
        """The same lookup by brute force over every stored hash: the reference the multi-hash
        lookup is checked against (slow: a full scan per hash)."""
        return self._search(queries, quality, threshold, exact=True)

    def _search(
        self,
        queries: Iterable[HashLike] | npt.NDArray[np.uint8],
        quality: int | None,
        threshold: int | None,
        *,
        exact: bool,
    ) -> list[list[Match]]:
        codes = as_codes(queries)
        radius = self._radius(threshold)
        if not len(codes):
            return []
        if quality is not None and quality < self.quality_floor:
            return [[] for _ in range(len(codes))]
        with self._lock.read():
            g = self._gen
            if g.size == 0:
                return [[] for _ in range(len(codes))]
            index = g.index.storage if exact else g.index
            # faiss returns distances < radius; +1 makes the threshold inclusive
            lims, dist, pos = index.range_search(codes, radius + 1)
            keep = ~g.dead[pos]
            entry_ids = g.ids[pos]
        out: list[list[Match]] = []
        for q in range(len(codes)):
            sl = slice(int(lims[q]), int(lims[q + 1]))
            k = keep[sl]
            found = sorted(
                Match(int(d), int(e)) for d, e in zip(dist[sl][k], entry_ids[sl][k], strict=True)
            )
            out.append(found)
        return out

    def _radius(self, threshold: int | None) -> int:
        if threshold is None:
            return self.threshold
        if not 0 <= threshold <= self.threshold:
            # the index's nflip was chosen for its own threshold: a wider lookup would not
            # have the completeness the index promises
            raise ValueError(f"threshold must be 0..{self.threshold}, not {threshold}")
        return threshold

    # ---- writing --------------------------------------------------------------------------
    def add(self, entry_id: int, pdq: HashLike, quality: int | None = None) -> bool:
        """Index one entry; False if it is below the quality floor or already indexed."""
        qualities = None if quality is None else [quality]
        return self.add_many([entry_id], [pdq], qualities) == 1

    def add_many(
        self,
        entry_ids: Sequence[int] | npt.NDArray[np.int64],
        hashes: Iterable[HashLike] | npt.NDArray[np.uint8],
        qualities: Sequence[int | None] | npt.NDArray[np.int64] | None = None,
    ) -> int:
        """Index many entries in one step; returns how many were added.  An entry whose
        quality is below the floor is skipped (None: unknown, e.g. an imported list without
        qualities, is indexed); so is an id already indexed, or repeated in this call."""
        ids = np.asarray(entry_ids, dtype=np.int64).reshape(-1)
        codes = as_codes(hashes)
        if len(ids) != len(codes):
            raise ValueError(f"{len(ids)} entry ids for {len(codes)} hashes")
        ok = np.ones(len(ids), np.bool_)
        if qualities is not None:
            q = (
                np.asarray(qualities, dtype=np.int64)
                if isinstance(qualities, np.ndarray)
                else np.array([-1 if x is None else x for x in qualities], dtype=np.int64)
            )
            if len(q) != len(ids):
                raise ValueError(f"{len(q)} qualities for {len(ids)} hashes")
            ok &= (q < 0) | (q >= self.quality_floor)
        _, first = np.unique(ids, return_index=True)
        once = np.zeros(len(ids), np.bool_)
        once[first] = True
        ok &= once
        with self._lock.write():
            live = self._live
            ok &= np.fromiter((i not in live for i in ids.tolist()), np.bool_, len(ids))
            self._gen.append(ids[ok], codes[ok])
            live.update(ids[ok].tolist())
        return int(ok.sum())

    def remove(self, entry_id: int) -> bool:
        """Stop matching one entry; False if it was not indexed."""
        return self.remove_many([entry_id]) == 1

    def remove_many(self, entry_ids: Iterable[int]) -> int:
        """Tombstone entries (they stop matching at once); rebuild once tombstones pile up."""
        with self._lock.write():
            ids = np.fromiter({int(i) for i in entry_ids} & self._live, dtype=np.int64)
            if not len(ids):
                return 0
            g = self._gen
            pos = g.live_positions(ids)
            g.dead[pos] = True
            g.n_dead += len(pos)
            self._live.difference_update(ids.tolist())
            due = g.n_dead >= max(self.rebuild_min, self.rebuild_ratio * g.size)
        if due:
            self.rebuild()
        return len(ids)

    def rebuild(self) -> bool:
        """Rebuild the faiss index without its tombstones; False if another thread is already
        rebuilding.  Lookups, adds and removals go on against the current index meanwhile: the
        new one is built from a snapshot, then whatever changed since is carried over."""
        if not self._rebuilding.acquire(blocking=False):
            return False
        try:
            with self._lock.read():
                old = self._gen
                snap = old.size
                alive = ~old.dead[:snap]
                codes = old.codes(0, snap)[alive]
                ids = old.ids[:snap][alive]
            fresh = _Generation(self.nflip)
            fresh.append(ids, codes)  # the slow part, outside any lock
            with self._lock.write():
                # positions past the snapshot were appended meanwhile; tombstones set meanwhile
                # on snapshot positions carry over (old positions map to new ones in order)
                fresh.dead[: len(ids)] = old.dead[:snap][alive]
                tail = ~old.dead[snap : old.size]
                fresh.append(old.ids[snap : old.size][tail], old.codes(snap, old.size)[tail])
                fresh.n_dead = int(fresh.dead[: fresh.size].sum())
                self._gen = fresh
                self.rebuilds += 1
            log.info("bank index rebuilt", extra={"entries": fresh.size - fresh.n_dead,
                                                  "dropped": snap - len(ids)})
            return True
        finally:
            self._rebuilding.release()
