"""The bank index: multi-hash lookups checked against brute force, the quality floor, the
threshold, idempotent adds, removals (tombstones, rebuilds, and what changes during a rebuild),
and many threads at once."""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt
import pytest

from pipeline.hashing import index as index_module
from pipeline.hashing.index import Match, PdqIndex

SEED = 20261205


def _codes(n: int, seed: int = SEED) -> npt.NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32), dtype=np.uint8)


def _flip(
    code: npt.NDArray[np.uint8], bits: int, rng: np.random.Generator
) -> npt.NDArray[np.uint8]:
    out = code.copy()
    for b in rng.choice(256, size=bits, replace=False):
        out[b // 8] ^= np.uint8(1 << (b % 8))
    return out


def _oracle(
    codes: npt.NDArray[np.uint8], ids: npt.NDArray[np.int64], q: npt.NDArray[np.uint8], t: int
) -> list[Match]:
    """Brute force in numpy, independent of faiss."""
    d = np.unpackbits(codes ^ q, axis=1).sum(axis=1)
    return sorted(Match(int(d[i]), int(ids[i])) for i in np.flatnonzero(d <= t))


def _queries(codes: npt.NDArray[np.uint8], n: int, seed: int) -> npt.NDArray[np.uint8]:
    """Stored hashes with 0..40 bits flipped, and random hashes (non-members)."""
    rng = np.random.default_rng(seed)
    near = [_flip(codes[rng.integers(len(codes))], int(rng.integers(0, 41)), rng)
            for _ in range(n)]
    return np.concatenate([np.stack(near), _codes(n, seed + 1)])


# ---- lookups against brute force ----------------------------------------------------------
def test_exhaustive_lookup_equals_brute_force() -> None:
    codes = _codes(20_000)
    ids = np.arange(100, 20_100, dtype=np.int64)
    index = PdqIndex(exhaustive=True)
    assert index.add_many(ids, codes) == len(ids)
    queries = _queries(codes, 300, seed=1)
    fast = index.search_many(queries)
    exact = index.exact_search_many(queries)
    for q, got, ref in zip(queries, fast, exact, strict=True):
        assert got == ref == _oracle(codes, ids, q, 31)


def test_fast_lookup_finds_everything_within_15_bits_and_nothing_false() -> None:
    codes = _codes(20_000)
    ids = np.arange(20_000, dtype=np.int64)
    index = PdqIndex()
    index.add_many(ids, codes)
    queries = _queries(codes, 300, seed=2)
    found = total = 0
    for q, got in zip(queries, index.search_many(queries), strict=True):
        ref = _oracle(codes, ids, q, 31)
        assert set(got) <= set(ref)  # never a false match, never a wrong distance
        assert [m for m in ref if m.distance <= 15] == [m for m in got if m.distance <= 15]
        found += len(got)
        total += len(ref)
    assert found <= total
    assert total > 200  # the queries did reach stored hashes: the check above had work to do


def test_results_are_nearest_first_with_distances() -> None:
    codes = _codes(50)
    index = PdqIndex()
    index.add_many(range(50), codes)
    q = codes[3].copy()
    index.add_many([900, 901], [q, _flip(q, 5, np.random.default_rng(0))])
    assert index.search(q) == [Match(0, 3), Match(0, 900), Match(5, 901)]
    assert index.search(q.tobytes()) == index.search(q.tobytes().hex())


def test_search_any_keeps_each_entry_once_at_its_nearest() -> None:
    codes = _codes(10)
    index = PdqIndex()
    index.add_many(range(10), codes)
    rng = np.random.default_rng(4)
    queries = [_flip(codes[2], 9, rng), _flip(codes[2], 3, rng), _flip(codes[7], 1, rng)]
    assert index.search_any(queries) == [Match(1, 7), Match(3, 2)]


def test_threshold_is_inclusive_and_can_only_be_narrowed() -> None:
    codes = _codes(1)
    index = PdqIndex(threshold=20)
    index.add(1, codes[0])
    rng = np.random.default_rng(5)
    assert index.search(_flip(codes[0], 20, rng)) == [Match(20, 1)]
    assert index.search(_flip(codes[0], 21, rng)) == []
    assert index.search(_flip(codes[0], 10, rng), threshold=9) == []
    with pytest.raises(ValueError):
        index.search(codes[0], threshold=21)
    with pytest.raises(ValueError):
        PdqIndex(threshold=256)


def test_an_empty_index_and_an_empty_query_list() -> None:
    index = PdqIndex()
    assert index.search(_codes(1)[0]) == []
    assert index.search_many([]) == []
    assert len(index) == 0


# ---- quality floor, ids -------------------------------------------------------------------
def test_quality_floor_applies_to_entries_and_queries() -> None:
    codes = _codes(4)
    index = PdqIndex(quality_floor=50)
    assert index.add_many([1, 2, 3, 4], codes, [49, 50, None, 100]) == 3
    assert 1 not in index and 2 in index and 3 in index
    assert index.search(codes[0]) == []
    assert index.search(codes[1], quality=50) == [Match(0, 2)]
    assert index.search(codes[1], quality=49) == []
    assert index.add_many([5], codes[:1], np.array([-1])) == 1  # -1: quality unknown


def test_adding_an_id_twice_is_a_no_op() -> None:
    codes = _codes(3)
    index = PdqIndex()
    assert index.add_many([1, 1, 2], codes) == 2
    assert index.add(2, codes[2]) is False
    assert index.search(codes[0]) == [Match(0, 1)]
    assert len(index) == 2


def test_bad_arguments_are_refused() -> None:
    index = PdqIndex()
    with pytest.raises(ValueError):
        index.add_many([1, 2], _codes(1))
    with pytest.raises(ValueError):
        index.add_many([1], _codes(1), [50, 60])
    with pytest.raises(ValueError):
        index.add(1, b"short")
    with pytest.raises(ValueError):
        index.add_many([1], np.zeros((1, 16), np.uint8))


# ---- removals -----------------------------------------------------------------------------
def test_a_removed_entry_stops_matching_at_once() -> None:
    codes = _codes(100)
    index = PdqIndex()
    index.add_many(range(100), codes)
    assert index.remove(5) and not index.remove(5) and not index.remove(12345)
    assert index.search(codes[5]) == [] == index.exact_search_many([codes[5]])[0]
    assert index.stats() == {"entries": 99, "tombstones": 1, "positions": 100, "rebuilds": 0}
    assert index.add(5, codes[5])  # back again, under the same id
    assert index.search(codes[5]) == [Match(0, 5)]


def test_tombstones_trigger_a_rebuild_that_keeps_every_live_entry() -> None:
    codes = _codes(3000)
    ids = np.arange(3000, dtype=np.int64)
    index = PdqIndex(rebuild_ratio=0.2, rebuild_min=100, exhaustive=True)
    index.add_many(ids, codes)
    assert index.remove_many(range(0, 599)) == 599
    assert index.stats()["rebuilds"] == 0
    index.remove(599)  # the 600th: 20% of 3000
    assert index.stats() == {"entries": 2400, "tombstones": 0, "positions": 2400, "rebuilds": 1}
    queries = _queries(codes, 100, seed=6)
    live = ids >= 600
    for q, got in zip(queries, index.search_many(queries), strict=True):
        assert got == _oracle(codes[live], ids[live], q, 31)


def test_changes_made_while_a_rebuild_runs_are_carried_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    codes = _codes(2000)
    ids = np.arange(2000, dtype=np.int64)
    extra = _codes(50, seed=9)
    index = PdqIndex(exhaustive=True, rebuild_min=10**9)
    index.add_many(ids, codes)
    index.remove_many(range(0, 500))  # tombstones already there when the rebuild starts
    real_append = index_module._Generation.append
    interfered = []

    def append(gen: index_module._Generation, *args: object) -> None:
        if gen is not index._gen and not interfered:
            # the rebuild is building its new index from the snapshot, outside the lock: the
            # process goes on adding and removing against the current one meanwhile
            interfered.append(True)
            assert index.add_many(np.arange(5000, 5050), extra) == 50
            assert index.remove_many([600, 601, 5000]) == 3
            assert index.search(codes[600]) == []
        real_append(gen, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(index_module._Generation, "append", append)
    assert index.rebuild()
    assert interfered
    all_codes = np.concatenate([codes, extra])
    all_ids = np.concatenate([ids, np.arange(5000, 5050)])
    live = (all_ids >= 500) & ~np.isin(all_ids, [600, 601, 5000])
    # 600 and 601 were in the snapshot: tombstones in the new index; 5000 came and went during
    # the rebuild, so the new index never holds it
    assert index.stats() == {"entries": int(live.sum()), "tombstones": 2,
                             "positions": 1500 + 49, "rebuilds": 1}
    queries = np.concatenate([_queries(all_codes, 100, seed=7), all_codes[[600, 2000, 2001]]])
    for q, got in zip(queries, index.search_many(queries), strict=True):
        assert got == _oracle(all_codes[live], all_ids[live], q, 31)


# ---- threads ------------------------------------------------------------------------------
def test_lookups_stay_right_while_other_threads_add_remove_and_rebuild() -> None:
    stable = _codes(200, seed=11)
    churn = _codes(3000, seed=12)
    index = PdqIndex(rebuild_min=200, rebuild_ratio=0.1)
    index.add_many(range(200), stable)
    gone = _codes(50, seed=13)
    index.add_many(range(10_000, 10_050), gone)
    index.remove_many(range(10_000, 10_050))
    errors: list[str] = []
    done = threading.Event()

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        rounds = 0
        try:
            while not done.is_set() or rounds < 20:
                rounds += 1
                k = int(rng.integers(200))
                if Match(0, k) not in index.search(stable[k]):
                    errors.append(f"stable entry {k} not found")
                if index.search(gone[int(rng.integers(50))]):
                    errors.append("a removed entry matched")
        except Exception as exc:  # a crashed reader must fail the test, not vanish
            errors.append(repr(exc))

    def writer() -> None:
        try:
            for start in range(0, 3000, 100):
                index.add_many(range(1000 + start, 1100 + start), churn[start : start + 100])
                index.remove_many(range(1000 + start, 1050 + start))
        finally:
            done.set()

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert index.stats()["rebuilds"] >= 1  # the writer's removals did rebuild under the readers
    assert len(index) == 200 + 1500
