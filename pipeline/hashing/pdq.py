"""PDQ perceptual hashes of decoded images: the hash and its quality, the eight dihedral
hashes (flips and quarter turns), the reference hex form and the Hamming distance.

PDQ (Meta's photo hash, computed by the `pdqhash` package) survives recompression, resizing
and colour changes; it does not survive crops of a few percent or rotations of a few degrees
(see docs/pdq.md for the distances measured on the sample photos).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import numpy as np
import numpy.typing as npt
import pdqhash
from PIL import Image

from pipeline.hashing.errors import InvalidPdqHash

__all__ = [
    "HASH_BYTES",
    "MATCH_THRESHOLD",
    "MAX_SIDE",
    "QUALITY_FLOOR",
    "Dihedral",
    "DihedralPdq",
    "Pdq",
    "hamming",
    "parse_hex",
    "pdq_dihedral",
    "pdq_hash",
]

HASH_BITS: Final = 256
HASH_BYTES: Final = HASH_BITS // 8
#: PDQ's customary match threshold: two hashes at most this many bits apart are the same picture
MATCH_THRESHOLD: Final = 31
#: below this quality (0-100; flat or nearly flat images) a hash is noise and never matches
QUALITY_FLOOR: Final = 50
#: images longer than this on their longer side are box-reduced to it first (as Meta's own
#: photo hasher does): PDQ blurs every image down to 64x64, and its cost grows with the pixels
#: (29 ms for a 1024x768 photo on the development machine, 5 ms reduced to 512x384 first)
MAX_SIDE: Final = 512

_HEX = re.compile(r"[0-9a-fA-F]{64}")


class Dihedral(StrEnum):
    """The eight symmetries of a rectangle, in the order `pdqhash` returns their hashes.

    Each names what was done to the *image*: the hash at ROTATE_90 is (within a few bits) the
    hash of the picture turned 90 degrees counter-clockwise.
    """

    ORIGINAL = "original"
    ROTATE_90 = "rotate_90"  # a quarter turn counter-clockwise
    ROTATE_180 = "rotate_180"
    ROTATE_270 = "rotate_270"  # a quarter turn clockwise
    FLIP_VERTICAL = "flip_vertical"  # upside down (PDQ's "flip X")
    FLIP_HORIZONTAL = "flip_horizontal"  # a mirror image (PDQ's "flip Y")
    TRANSPOSE = "transpose"  # mirrored about the main diagonal (PDQ's "flip +1")
    TRANSVERSE = "transverse"  # mirrored about the other diagonal (PDQ's "flip -1")


@dataclass(frozen=True, slots=True)
class Pdq:
    """One PDQ hash (32 bytes, most significant bit of the reference hex first) and the
    quality of the image it came from."""

    hash: bytes
    quality: int

    def __post_init__(self) -> None:
        if len(self.hash) != HASH_BYTES:
            raise ValueError(f"a PDQ hash is {HASH_BYTES} bytes, not {len(self.hash)}")
        if not 0 <= self.quality <= 100:
            raise ValueError(f"PDQ quality is 0..100, not {self.quality}")

    @property
    def hex(self) -> str:
        """The reference text form: 64 lowercase hex digits, as ThreatExchange and HMA write it."""
        return self.hash.hex()

    @classmethod
    def from_hex(cls, text: str, quality: int = 100) -> Pdq:
        return cls(parse_hex(text), quality)

    def matchable(self, floor: int = QUALITY_FLOOR) -> bool:
        return self.quality >= floor


@dataclass(frozen=True, slots=True)
class DihedralPdq:
    """The eight dihedral hashes of one image (in `Dihedral` order) and its quality."""

    hashes: tuple[bytes, ...]
    quality: int

    def __post_init__(self) -> None:
        if len(self.hashes) != len(Dihedral) or any(len(h) != HASH_BYTES for h in self.hashes):
            raise ValueError("a dihedral PDQ is eight 32-byte hashes")

    @property
    def original(self) -> Pdq:
        return Pdq(self.hashes[0], self.quality)

    def __getitem__(self, which: Dihedral) -> Pdq:
        return Pdq(self.hashes[list(Dihedral).index(which)], self.quality)


def parse_hex(text: str) -> bytes:
    """32 hash bytes from the reference hex form (either case, surrounding blanks ignored)."""
    cleaned = text.strip()
    if not _HEX.fullmatch(cleaned):
        raise InvalidPdqHash(f"not a PDQ hash (64 hexadecimal digits): {text[:80]!r}")
    return bytes.fromhex(cleaned)


def hamming(a: bytes, b: bytes) -> int:
    """The number of bits in which two hashes of equal length differ."""
    if len(a) != len(b):
        raise ValueError("hashes of different lengths")
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).bit_count()


def pdq_hash(pixels: npt.NDArray[np.uint8], *, max_side: int | None = MAX_SIDE) -> Pdq:
    """The PDQ hash and quality of an RGB image (height x width x 3, uint8)."""
    bits, quality = pdqhash.compute(_prepare(pixels, max_side))
    return Pdq(_pack(bits), int(quality))


def pdq_dihedral(
    pixels: npt.NDArray[np.uint8], *, max_side: int | None = MAX_SIDE
) -> DihedralPdq:
    """The eight dihedral hashes of an RGB image, for about the cost of one: they come from the
    same DCT, so a bank holding only original hashes still matches a mirrored or turned copy
    when all eight are looked up."""
    all_bits, quality = pdqhash.compute_dihedral(_prepare(pixels, max_side))
    return DihedralPdq(tuple(_pack(bits) for bits in all_bits), int(quality))


def _prepare(pixels: npt.NDArray[np.uint8], max_side: int | None) -> npt.NDArray[np.uint8]:
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(
            f"PDQ needs an RGB uint8 image (height x width x 3), not {pixels.dtype} "
            f"{pixels.shape}"
        )
    height, width = pixels.shape[0], pixels.shape[1]
    longer = max(height, width)
    if max_side is not None and longer > max_side:
        # PDQ blurs any image down to 64x64 anyway; a box reduction first costs a few bits
        # against the full-resolution hash (docs/pdq.md), brings copies of one photo at
        # different sizes to the same size, and saves most of the time.
        scale = max_side / longer
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = Image.fromarray(np.ascontiguousarray(pixels))
        if longer >= 2 * max_side:  # a whole-factor box reduction first: a third of the cost
            image = image.reduce(longer // max_side)
        if image.size != size:
            image = image.resize(size, Image.Resampling.BOX)
        return np.asarray(image)
    # pdqhash reads the luma buffer as row-major without looking at strides: a transposed or
    # rotated *view* gives a silently wrong hash, so the pixels are made C-contiguous here.
    return np.ascontiguousarray(pixels)


def _pack(bits: npt.NDArray[np.integer]) -> bytes:
    # pdqhash returns bit 255 first, which is the first bit of the reference hex form
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes()
