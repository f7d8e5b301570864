"""Fixtures of the batch-job tests: benign images the tests make (sample photos transformed)
plus bad files, written as a folder and as JSONL / CSV / Parquet manifests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from models.calibration import as_jpeg, base_photos, derived_images
from pipeline.runtime import Runtime
from pipeline.settings import DEMO_POLICY, Settings

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"
#: bad files every job set carries: (name, bytes, the error code the row must get)
BAD_FILES: tuple[tuple[str, bytes, str], ...] = (
    ("corrupt.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 40, "image.corrupt"),
    ("empty.jpg", b"", "image.empty"),
    ("notes.txt", b"not an image at all\n", "image.unsupported_type"),
    ("page.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image.unsupported_type"),
)


@dataclass(frozen=True)
class ImageSet:
    folder: Path
    #: JSONL manifest: every image, the bad files, a missing file, a bad context, a bad line
    manifest: Path
    n_images: int
    #: ordinal -> the error code its row must carry
    expected_errors: dict[int, str]

    def rows(self) -> list[dict[str, object]]:
        out = []
        for line in self.manifest.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({})
        return out


def make_image_set(root: Path, n: int, *, seed: int, width: int = 512,
                   height: int = 384) -> ImageSet:
    folder = root / "images"
    folder.mkdir(parents=True)
    images = derived_images(base_photos([SAMPLES]), n, seed=seed, width=width, height=height)
    lines: list[str] = []
    expected: dict[int, str] = {}
    for i, image in enumerate(images):
        name = f"img{i:04d}.jpg"
        (folder / name).write_bytes(as_jpeg(image, quality=88))
        # two accounts, contexts that move thresholds, so routing differs between rows
        context = {"medical_sharing": i % 7 == 0, "audience": ("public", "private")[i % 2]}
        lines.append(json.dumps({"path": f"images/{name}", "upload_id": f"u{i:04d}",
                                 "account_id": f"acct-{i % 3}", "context": context}))
    for name, data, code in BAD_FILES:
        (folder / name).write_bytes(data)
        expected[len(lines)] = code
        lines.append(json.dumps({"path": f"images/{name}", "upload_id": f"bad-{name}",
                                 "account_id": "acct-bad"}))
    expected[len(lines)] = "file.not_found"
    lines.append(json.dumps({"path": "images/missing.jpg", "upload_id": "bad-missing"}))
    expected[len(lines)] = "context.invalid"
    lines.append(json.dumps({"path": "images/img0000.jpg", "upload_id": "bad-context",
                             "context": {"audience": "everyone"}}))
    expected[len(lines)] = "row.malformed"
    lines.append("{not json")
    expected[len(lines)] = "row.no_location"
    lines.append(json.dumps({"upload_id": "no-path"}))
    manifest = root / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return ImageSet(folder, manifest, n, expected)


@pytest.fixture(scope="session")
def image_set(tmp_path_factory: pytest.TempPathFactory) -> ImageSet:
    """A few hundred test-made images plus bad files (made once per session)."""
    return make_image_set(tmp_path_factory.mktemp("batchset"), 240, seed=11)


@pytest.fixture(scope="session")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> ImageSet:
    return make_image_set(tmp_path_factory.mktemp("smallset"), 48, seed=12)


def demo_settings(data_dir: Path, db_url: str) -> Settings:
    """The demo policy flags faces, so benign photos with people reach review queues."""
    return Settings(data_dir=data_dir, database_url=db_url, policy_path=DEMO_POLICY)


@pytest.fixture
def make_runtime() -> Iterator[object]:
    made: list[Runtime] = []

    def make(data_dir: Path, db_url: str) -> Runtime:
        rt = Runtime(demo_settings(data_dir, db_url))
        rt.db.upgrade()
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.close()
