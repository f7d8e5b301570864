"""PDQ hashes: the reference hex form, the dihedral hashes, what a match survives (resize,
recompression, greyscale, mirror, quarter turn), what it does not (crops, tilts: measured and
reported), and that flat images never match."""

from __future__ import annotations

import itertools

import numpy as np
import pdqhash
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from pipeline.hashing.errors import InvalidPdqHash
from pipeline.hashing.index import PdqIndex
from pipeline.hashing.pdq import (
    MATCH_THRESHOLD,
    QUALITY_FLOOR,
    Dihedral,
    DihedralPdq,
    Pdq,
    hamming,
    parse_hex,
    pdq_dihedral,
    pdq_hash,
)
from tests.photos import (
    LIMIT_EDITS,
    ROOT,
    SAMPLE_NAMES,
    SKIMAGE_NAMES,
    SURVIVES,
    decode,
    jpeg,
    reshared,
    sample,
    skimage_photo,
)

hashes32 = st.binary(min_size=32, max_size=32)


def _best(query: DihedralPdq, stored: Pdq) -> int:
    """How a bank holding `stored` sees an upload: the nearest of its eight dihedral hashes."""
    return min(hamming(h, stored.hash) for h in query.hashes)


# ---- encoding -----------------------------------------------------------------------------
@given(hashes32)
def test_hex_round_trip(h: bytes) -> None:
    text = Pdq(h, 100).hex
    assert len(text) == 64 and text == text.lower()
    assert parse_hex(text) == h
    assert parse_hex(f"  {text.upper()}\n") == h


@pytest.mark.parametrize("bad", ["", "abc", "g" * 64, "0" * 63, "0" * 65, "0x" + "0" * 62])
def test_parse_hex_refuses_what_is_not_a_hash(bad: str) -> None:
    with pytest.raises(InvalidPdqHash) as info:
        parse_hex(bad)
    assert info.value.code == "bank.invalid_pdq"


@given(hashes32, hashes32)
def test_hamming_counts_differing_bits(a: bytes, b: bytes) -> None:
    expected = int(np.unpackbits(np.frombuffer(a, np.uint8) ^ np.frombuffer(b, np.uint8)).sum())
    assert hamming(a, b) == hamming(b, a) == expected
    assert hamming(a, a) == 0


def test_hex_follows_the_reference_bit_order() -> None:
    # The reference implementation sets bit i*16+j of sixteen 16-bit words when DCT coefficient
    # [i][j] is above the median, and prints the words from w[15] down to w[0].  Rebuild that
    # text from pdqhash's float output, independently of our packing, and compare.
    pixels = sample("chelsea")
    floats, _ = pdqhash.compute_float(np.ascontiguousarray(pixels))
    dct = np.asarray(floats)[::-1].reshape(16, 16)  # compute_float returns it reversed
    bits = (dct > np.median(dct)).reshape(-1)
    words = [sum(int(bits[k * 16 + b]) << b for b in range(16)) for k in range(16)]
    reference = "".join(f"{words[k]:04x}" for k in reversed(range(16)))
    assert pdq_hash(pixels).hex == reference


def test_views_hash_like_copies() -> None:
    # pdqhash reads row-major memory and ignores strides: a rotated view must be copied first
    pixels = sample("coffee")
    view = np.rot90(pixels)
    assert not view.flags.c_contiguous
    assert pdq_hash(view) == pdq_hash(np.ascontiguousarray(view))


def test_large_images_are_reduced_first_at_little_cost() -> None:
    big = np.asarray(Image.fromarray(sample("astronaut")).resize((2600, 2600)))
    full, reduced = pdq_hash(big, max_side=None), pdq_hash(big)
    assert reduced.quality == full.quality == 100
    # measured 0-18 bits on the photos in docs/pdq.md (10 here): well inside the threshold
    assert hamming(full.hash, reduced.hash) <= 18 < MATCH_THRESHOLD


def test_only_rgb_bytes_are_hashed() -> None:
    with pytest.raises(ValueError, match="RGB uint8"):
        pdq_hash(np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match="RGB uint8"):
        pdq_hash(np.zeros((64, 64, 3), np.float32))


# ---- dihedral hashes ----------------------------------------------------------------------
TRANSPOSITIONS = {
    Dihedral.ROTATE_90: Image.Transpose.ROTATE_90,  # Pillow turns counter-clockwise
    Dihedral.ROTATE_180: Image.Transpose.ROTATE_180,
    Dihedral.ROTATE_270: Image.Transpose.ROTATE_270,
    Dihedral.FLIP_VERTICAL: Image.Transpose.FLIP_TOP_BOTTOM,
    Dihedral.FLIP_HORIZONTAL: Image.Transpose.FLIP_LEFT_RIGHT,
    Dihedral.TRANSPOSE: Image.Transpose.TRANSPOSE,
    Dihedral.TRANSVERSE: Image.Transpose.TRANSVERSE,
}


@pytest.mark.parametrize("which", list(TRANSPOSITIONS), ids=str)
def test_each_dihedral_hash_is_the_hash_of_that_transformed_image(which: Dihedral) -> None:
    pixels = sample("chelsea")
    dihedral = pdq_dihedral(pixels)
    assert dihedral.original == pdq_hash(pixels)
    turned = np.asarray(Image.fromarray(pixels).transpose(TRANSPOSITIONS[which]))
    own = pdq_hash(turned).hash
    distances = {d: hamming(own, dihedral[d].hash) for d in Dihedral}
    # the named hash is the one that matches, and by far the nearest
    assert distances[which] <= 12
    assert all(v > 90 for d, v in distances.items() if d is not which)


# ---- what a match survives ----------------------------------------------------------------
@pytest.mark.parametrize("edit", list(SURVIVES))
@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_reshared_copies_match_their_original(name: str, edit: str) -> None:
    original = pdq_hash(sample(name))
    fn, quality = SURVIVES[edit]
    copy = pdq_dihedral(decode(reshared(sample(name), fn, quality=quality)))
    assert original.quality >= QUALITY_FLOOR and copy.quality >= QUALITY_FLOOR
    assert _best(copy, original) <= MATCH_THRESHOLD
    if edit not in ("mirror", "90° turn"):
        # no dihedral help needed: the upload's own hash is near
        assert hamming(copy.original.hash, original.hash) <= MATCH_THRESHOLD


def test_different_pictures_do_not_match() -> None:
    photos = {n: sample(n) for n in SAMPLE_NAMES} | {n: skimage_photo(n) for n in SKIMAGE_NAMES}
    hashes = {n: pdq_dihedral(p) for n, p in photos.items()}
    for a, b in itertools.permutations(hashes, 2):
        assert _best(hashes[a], hashes[b].original) > MATCH_THRESHOLD, (a, b)


def test_a_bank_of_originals_finds_each_reshared_copy_and_nothing_else() -> None:
    index = PdqIndex()
    for entry_id, name in enumerate(SAMPLE_NAMES):
        h = pdq_hash(sample(name))
        assert index.add(entry_id, h.hash, h.quality)
    for entry_id, name in enumerate(SAMPLE_NAMES):
        for edit, (fn, quality) in SURVIVES.items():
            copy = pdq_dihedral(decode(reshared(sample(name), fn, quality=quality)))
            found = index.search_any(copy.hashes, quality=copy.quality)
            assert [m.entry_id for m in found] == [entry_id], (name, edit)


# ---- flat images --------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0, 128, 255])
def test_a_flat_image_has_low_quality_and_matches_nothing(value: int) -> None:
    flat = decode(jpeg(Image.new("RGB", (400, 300), (value, value, value))))
    h = pdq_dihedral(flat)
    assert h.quality < QUALITY_FLOOR
    index = PdqIndex()
    # the same flat picture, twice: a bank does not take it, and a query with it finds nothing
    assert not index.add(1, h.original.hash, h.quality)
    assert index.add(2, pdq_hash(sample("coffee")).hash, 100)
    assert index.add(3, h.original.hash, None)  # an imported entry of unknown quality is taken
    assert index.search_any(h.hashes, quality=h.quality) == []


def test_tiny_images_have_quality_zero() -> None:
    assert pdq_hash(np.full((4, 4, 3), 7, np.uint8)).quality == 0


# ---- what it does not survive: measured, reported, and the documented limit asserted --------
def test_crops_and_tilts_measured() -> None:
    """PDQ compares the whole frame: cutting a few percent off, or tilting a few degrees, moves
    most of the picture and the hash with it.  This test measures the distance of each edited
    copy to its original (best of the eight dihedral hashes), writes the table to
    test-artifacts/pdq-limits.md (and prints it: `pytest -rP`), and asserts the limit the
    README states: a 5% crop and a 5° tilt do not match on any sample photo; a 2% crop does."""
    rows: dict[str, dict[str, int]] = {}
    for name in SAMPLE_NAMES:
        original = pdq_hash(sample(name))
        rows[name] = {
            edit: _best(pdq_dihedral(decode(reshared(sample(name), fn))), original)
            for edit, fn in LIMIT_EDITS.items()
        }
    table = _table(rows)
    out = ROOT / "test-artifacts" / "pdq-limits.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table, encoding="utf-8")
    print(table)
    column = {edit: [rows[n][edit] for n in SAMPLE_NAMES] for edit in LIMIT_EDITS}
    assert all(d <= MATCH_THRESHOLD for d in column["crop 2%"]), table
    for edit in ("crop 5%", "crop 10%", "crop 5% one side", "tilt 5°", "tilt 10°"):
        assert all(d > MATCH_THRESHOLD for d in column[edit]), (edit, table)


def _table(rows: dict[str, dict[str, int]]) -> str:
    edits = list(next(iter(rows.values())))
    lines = [
        f"Distance in bits to the original (a match is <= {MATCH_THRESHOLD}; * marks a match)",
        "",
        "| photo | " + " | ".join(edits) + " |",
        "|---|" + "---:|" * len(edits),
    ]
    for name, row in rows.items():
        cells = [f"{d}{' *' if d <= MATCH_THRESHOLD else ''}" for d in row.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
