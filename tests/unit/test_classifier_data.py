"""What training takes from a labelled manifest: the categories to learn, and decoded images."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.classifier.data import Manifest, decode_image
from models.errors import DatasetError
from pipeline.ingest import ingest_bytes
from tests.hostile import ACCEPT, CORPUS

POLICY = ("nudity.explicit", "violence.graphic", "person.face")


def _manifest(tmp_path: Path, rows: list[tuple[str, list[str]]]) -> Manifest:
    lines = []
    for i, (split, labels) in enumerate(rows):
        name = f"{split}-{i}.png"
        Image.fromarray(np.full((8, 10 + i, 3), 20 * i, np.uint8)).save(tmp_path / name)
        lines.append(json.dumps({"path": name, "labels": labels, "split": split}))
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Manifest.load(path)


def test_categories_to_learn_follow_the_policy_order_and_the_labels_used(tmp_path: Path) -> None:
    m = _manifest(tmp_path, [("train", ["person.face"]), ("train", ["nudity.explicit"]),
                             ("val", [])])
    assert m.categories_to_learn(POLICY, source="policy p") == ("nudity.explicit", "person.face")
    assert m.categories_to_learn(POLICY, requested=["person.face"], source="policy p") == (
        "person.face",)
    with pytest.raises(DatasetError, match=r"categories \['nope'\] are not in policy p"):
        m.categories_to_learn(POLICY, requested=["nope"], source="policy p")
    with pytest.raises(DatasetError, match=r"manifest labels \['person.face'\] are not "
                                           r"categories of policy q \(nudity.explicit\)"):
        m.categories_to_learn(("nudity.explicit",), source="policy q")


def test_a_manifest_without_labels_has_nothing_to_learn(tmp_path: Path) -> None:
    m = _manifest(tmp_path, [("train", []), ("val", [])])
    with pytest.raises(DatasetError, match="no row carries a label; nothing to learn"):
        m.categories_to_learn(POLICY, source="policy p")


def test_images_come_from_the_splits_in_order_up_to_the_limit(tmp_path: Path) -> None:
    m = _manifest(tmp_path, [("train", []), ("test", []), ("val", []), ("test", [])])
    widths = [img.shape[1] for img in m.images(("test", "val"), 10)]
    assert widths == [11, 13, 12]  # both test rows first, then val
    assert len(m.images(("test", "val"), 2)) == 2
    assert all(img.dtype == np.uint8 and img.shape[2] == 3 for img in m.images(("train",), 5))


ACCEPTED = [name for name, (_, code) in CORPUS.items() if code == ACCEPT]


@pytest.mark.parametrize("name", ACCEPTED)
def test_training_decodes_every_accepted_upload_to_the_pixels_it_is_served(name: str) -> None:
    """Training, evaluation and model comparison decode with `decode_image`; uploads go
    through ingest.  On every kind of file ingest accepts (transparent PNG and WebP, 16-bit
    grey, palettes with a transparent colour, CMYK, EXIF-rotated and EXIF-garbage JPEGs,
    animations) the two give the same pixels, so a model learns from what it will see."""
    data = CORPUS[name][0]()
    served = ingest_bytes(data, max_bytes=1 << 26, max_pixels=1 << 26).pixels
    trained = decode_image(data)
    assert trained.shape == served.shape and trained.dtype == served.dtype
    assert np.array_equal(trained, served)


def test_a_transparent_picture_is_white_where_it_is_transparent_in_training_too() -> None:
    """Before the two shared one conversion, training saw transparency as black."""
    rgba = Image.new("RGBA", (4, 2), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (200, 10, 10, 255))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    pixels = decode_image(buf.getvalue())
    assert tuple(pixels[0, 0]) == (200, 10, 10)
    assert tuple(pixels[1, 3]) == (255, 255, 255)
