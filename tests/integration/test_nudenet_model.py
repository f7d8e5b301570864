"""The real NudeNet 320n model: loads offline, finds what NudeNet finds, refuses bad weights.

Parity is checked against the nudenet package itself (`NudeDetector.detect`, `_read_image`,
`_postprocess`), so a change in either side shows up here.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import nudenet.nudenet as nudenet_source
import numpy as np
import numpy.typing as npt
import pytest
import skimage.data
from nudenet import NudeDetector

from models.base import RGBImage
from models.errors import BadModelInput, ModelDigestMismatch, ModelFileMissing
from models.nudenet import Detection, NudeNetScorer, default_card_path
from models.registry import load_scorer

pytestmark = pytest.mark.model

SAMPLES = Path(__file__).parents[2] / "samples"
SAMPLE_NAMES = ("astronaut", "camera", "chelsea", "coffee", "immunohistochemistry", "rocket")
NO_PEOPLE = ("chelsea", "coffee", "immunohistochemistry", "rocket")


@pytest.fixture(scope="module")
def scorer() -> NudeNetScorer:
    # One thread: the test machines are small and shared.
    return NudeNetScorer(threads=1)


@pytest.fixture(scope="module")
def reference() -> Iterator[NudeDetector]:
    yield NudeDetector()


@pytest.fixture(scope="module")
def package_weights(scorer: NudeNetScorer) -> Path:
    return scorer.weights_path


def read_rgb(path: Path) -> RGBImage:
    # cv2 decodes exactly as NudeDetector.detect(path) does, so parity tests compare only
    # our pre/post-processing (Pillow gives the same pixels on these files).
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    return np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)


@pytest.fixture(scope="module")
def samples() -> dict[str, RGBImage]:
    return {name: read_rgb(SAMPLES / f"{name}.jpg") for name in SAMPLE_NAMES}


def skimage_photos() -> dict[str, RGBImage]:
    astronaut = skimage.data.astronaut()
    camera = skimage.data.camera()
    photos = {
        "astronaut_1024x768": cv2.resize(astronaut, (1024, 768), interpolation=cv2.INTER_AREA),
        # The face is cut by the top and left edges: exercises NudeNet's clipping.
        "astronaut_cropped_top_left": astronaut[120:, 200:],
        "astronaut_portrait": astronaut[:, 100:400],
        "astronaut_tiny": cv2.resize(astronaut, (97, 131), interpolation=cv2.INTER_AREA),
        "camera_gray_as_rgb": np.stack([camera] * 3, axis=-1),
        "chelsea": skimage.data.chelsea(),
        "hubble_deep_field": skimage.data.hubble_deep_field(),
        "retina": skimage.data.retina(),
    }
    return {name: np.ascontiguousarray(image[..., :3]) for name, image in photos.items()}


def assert_same_detections(ours: list[Detection], theirs: list[dict[str, Any]]) -> None:
    def key(label: str, box: Any) -> tuple[str, int, int]:
        return (label, int(box[0]), int(box[1]))

    # Order-insensitive: near-equal scores may legitimately swap places.
    ours = sorted(ours, key=lambda d: key(d.label, d.nudenet_box))
    theirs = sorted(theirs, key=lambda d: key(d["class"], d["box"]))
    assert [d.label for d in ours] == [d["class"] for d in theirs]
    for mine, ref in zip(ours, theirs, strict=True):
        assert mine.score == pytest.approx(ref["score"], abs=1e-3)
        assert np.abs(np.subtract(mine.nudenet_box, ref["box"])).max() <= 1, (mine, ref)
        # Our evidence box starts where NudeNet's does and never overhangs further (NudeNet
        # truncates x and w separately, so its right edge can fall up to 2 px short).
        x, y, w, h = ref["box"]
        assert abs(mine.box[0] - x) <= 1.5 and abs(mine.box[1] - y) <= 1.5
        assert mine.box[2] <= x + w + 2.5 and mine.box[3] <= y + h + 2.5


# -- what the model sees on the bundled samples ---------------------------------------------


def test_face_detected_on_astronaut(scorer: NudeNetScorer, samples: dict[str, RGBImage]) -> None:
    (result,) = scorer.score([samples["astronaut"]])
    # The real model gives ~0.73 for Eileen Collins' face.
    assert result.scores["person.face"] > 0.6
    assert all(v == 0.0 for k, v in result.scores.items() if k != "person.face")
    (evidence,) = result.evidence
    assert (evidence.category, evidence.label) == ("person.face", "FACE_FEMALE")
    assert evidence.score == result.scores["person.face"]
    assert evidence.box is not None
    x1, y1, x2, y2 = evidence.box
    assert 150 < x1 < 200 and 60 < y1 < 110 and 250 < x2 < 300 and 160 < y2 < 210


def test_face_detected_on_camera(scorer: NudeNetScorer, samples: dict[str, RGBImage]) -> None:
    (result,) = scorer.score([samples["camera"]])
    # ~0.59 for the cameraman (a grayscale photo)
    assert result.scores["person.face"] > 0.5
    assert [e.label for e in result.evidence] == ["FACE_MALE"]


@pytest.mark.parametrize("name", NO_PEOPLE)
def test_nothing_found_without_people(
    scorer: NudeNetScorer, samples: dict[str, RGBImage], name: str
) -> None:
    (result,) = scorer.score([samples[name]])
    assert result.scores == dict.fromkeys(scorer.categories, 0.0)
    assert result.evidence == ()
    assert scorer.detect([samples[name]]) == [[]]


def test_keep_threshold_is_what_clears_the_coffee_cup(
    scorer: NudeNetScorer, samples: dict[str, RGBImage]
) -> None:
    # One anchor on coffee.jpg scores ~0.21 for an explicit label: a candidate (>= 0.2) that
    # only the keep threshold (0.25) removes.  If this changes, the card's thresholds matter.
    tensor, _ = scorer.preprocess([samples["coffee"]])
    best = float(scorer.run_model(tensor)[0, 4:].max())
    assert scorer.card.candidate_threshold <= best <= scorer.card.keep_threshold


def test_batch_equals_single(scorer: NudeNetScorer, samples: dict[str, RGBImage]) -> None:
    images = list(samples.values())
    batched = scorer.score(images)
    singles = [scorer.score([image])[0] for image in images]
    for got, want in zip(batched, singles, strict=True):
        assert got.model_version == want.model_version
        assert got.scores == pytest.approx(want.scores, abs=1e-5)
        assert [(e.category, e.label) for e in got.evidence] == [
            (e.category, e.label) for e in want.evidence
        ]
        for a, b in zip(got.evidence, want.evidence, strict=True):
            assert a.box == pytest.approx(b.box, abs=0.05)


def test_every_result_reports_every_category_in_card_order(
    scorer: NudeNetScorer, samples: dict[str, RGBImage]
) -> None:
    assert scorer.categories == (
        "nudity.explicit",
        "nudity.partial",
        "skin.exposed",
        "person.face",
    )
    for result in scorer.score(list(samples.values())):
        assert tuple(result.scores) == scorer.categories
        assert all(0.0 <= v <= 1.0 for v in result.scores.values())


def test_bad_input_is_refused_before_the_model(scorer: NudeNetScorer) -> None:
    assert scorer.score([]) == []
    with pytest.raises(BadModelInput):
        scorer.score([np.zeros((8, 8, 3), dtype=np.float32)])


# -- identity of the weights ----------------------------------------------------------------


def test_version_is_name_and_weights_digest(scorer: NudeNetScorer) -> None:
    assert re.fullmatch(r"nudenet-320n@sha256:[0-9a-f]{12}", scorer.version)
    assert scorer.version == f"nudenet-320n@sha256:{scorer.card.sha256[:12]}"
    assert scorer.name == "nudenet-320n"
    assert scorer.providers[-1] == "CPUExecutionProvider"


def test_weights_come_from_the_installed_package(package_weights: Path) -> None:
    assert package_weights.name == "320n.onnx"
    assert package_weights.parent == Path(nudenet_source.__file__).parent


def test_local_weights_copy_loads(
    tmp_path: Path, package_weights: Path, scorer: NudeNetScorer, samples: dict[str, RGBImage]
) -> None:
    local = tmp_path / "weights" / "320n.onnx"
    local.parent.mkdir()
    shutil.copyfile(package_weights, local)
    copy = NudeNetScorer(weights=local, threads=1)
    assert copy.weights_path == local
    assert copy.version == scorer.version
    assert copy.score([samples["astronaut"]]) == scorer.score([samples["astronaut"]])


def test_load_scorer_by_name(scorer: NudeNetScorer) -> None:
    loaded = load_scorer("nudenet-320n", threads=1)
    assert isinstance(loaded, NudeNetScorer)
    assert loaded.version == scorer.version


def test_one_flipped_byte_is_refused(tmp_path: Path, package_weights: Path) -> None:
    blob = bytearray(package_weights.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    corrupted = tmp_path / "320n.onnx"
    corrupted.write_bytes(bytes(blob))
    with pytest.raises(ModelDigestMismatch) as info:
        NudeNetScorer(weights=corrupted, threads=1)
    message = str(info.value)
    assert str(corrupted) in message
    assert json.loads(default_card_path().read_text())["weights"]["sha256"] in message
    assert info.value.code == "model.digest_mismatch"


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileMissing, match="not found") as info:
        NudeNetScorer(weights=tmp_path / "absent.onnx", threads=1)
    assert info.value.code == "model.file_missing"


def test_a_card_naming_other_weights_refuses_unless_told(
    tmp_path: Path, scorer: NudeNetScorer
) -> None:
    card = json.loads(default_card_path().read_text())
    card["weights"]["sha256"] = "0" * 64
    other_card = tmp_path / "card.json"
    other_card.write_text(json.dumps(card))
    with pytest.raises(ModelDigestMismatch):
        NudeNetScorer(card=other_card, threads=1)
    # The override is for experiments; the version still names the weights actually loaded.
    loaded = NudeNetScorer(card=other_card, threads=1, verify_digest=False)
    assert loaded.version == scorer.version


# -- parity with the nudenet package --------------------------------------------------------


@pytest.mark.parametrize(
    "size", [(512, 512), (480, 640), (640, 480), (1, 1), (37, 1000), (1411, 999), (320, 320)]
)
def test_preprocessing_is_bit_identical_to_nudenet(
    scorer: NudeNetScorer, size: tuple[int, int]
) -> None:
    rng = np.random.default_rng(sum(size))
    rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    tensor, meta = scorer.preprocess([rgb])
    blob, *_ = nudenet_source._read_image(np.ascontiguousarray(rgb[..., ::-1]), 320)
    assert tensor.dtype == np.float32 and tensor.shape == (1, 3, 320, 320)
    assert np.array_equal(tensor, blob)
    assert (int(meta.heights[0]), int(meta.widths[0]), int(meta.sides[0])) == (*size, max(size))


def synthetic_outputs(sizes: list[tuple[int, int]]) -> npt.NDArray[np.float32]:
    """YOLOv8-shaped outputs with many overlapping candidates, near-threshold scores, every
    label, and boxes running off every edge: the cases real benign photos rarely reach."""
    rng = np.random.default_rng(20240601)
    anchors, per_image = 2100, 400
    raw = np.zeros((len(sizes), 22, anchors), dtype=np.float32)
    raw[:, 4:, :] = rng.uniform(0.0, 0.19, (len(sizes), 18, anchors))
    for i in range(len(sizes)):
        idx = rng.choice(anchors, per_image, replace=False)
        centres = rng.uniform(-30.0, 350.0, (15, 2))
        xy = centres[rng.integers(0, 15, per_image)] + rng.normal(0.0, 8.0, (per_image, 2))
        wh = rng.uniform(4.0, 200.0, (per_image, 2))
        raw[i, 0, idx], raw[i, 1, idx] = xy[:, 0], xy[:, 1]
        raw[i, 2, idx], raw[i, 3, idx] = wh[:, 0], wh[:, 1]
        raw[i, 4 + rng.integers(0, 18, per_image), idx] = rng.uniform(0.19, 0.99, per_image)
    return raw


def test_postprocessing_matches_nudenet_exactly(scorer: NudeNetScorer) -> None:
    sizes = [(480, 640), (640, 480), (333, 333), (37, 1000), (1411, 999)]
    raw = synthetic_outputs(sizes)
    _, meta = scorer.preprocess([np.zeros((h, w, 3), dtype=np.uint8) for h, w in sizes])
    ours = scorer.postprocess(raw, meta)
    total = 0
    for i, (h, w) in enumerate(sizes):
        side = max(h, w)
        theirs = nudenet_source._postprocess(
            [raw[i : i + 1]], side - w, side - h, side / w, side / h, w, h, 320, 320
        )
        # Same float32 arithmetic and the same NMS: identical, not merely close.
        assert [d.as_nudenet() for d in ours[i]] == theirs
        total += len(theirs)
    assert total > 50  # the synthetic outputs really exercised NMS and thresholds


def test_detections_match_nudenet_on_sample_files(
    scorer: NudeNetScorer, reference: NudeDetector, samples: dict[str, RGBImage]
) -> None:
    ours = scorer.detect(list(samples.values()))
    found = 0
    for name, mine in zip(samples, ours, strict=True):
        theirs = reference.detect(str(SAMPLES / f"{name}.jpg"))
        assert_same_detections(mine, theirs)
        found += len(theirs)
    assert found >= 2


def test_detections_match_nudenet_on_skimage_photos(
    scorer: NudeNetScorer, reference: NudeDetector
) -> None:
    photos = skimage_photos()
    # One mixed-size batch on our side, one image at a time on NudeNet's.
    ours = scorer.detect(list(photos.values()))
    found = 0
    for image, mine in zip(photos.values(), ours, strict=True):
        theirs = reference.detect(np.ascontiguousarray(image[..., ::-1]))  # NudeNet wants BGR
        assert_same_detections(mine, theirs)
        found += len(theirs)
    assert found >= 5


def test_extreme_aspect_ratio_does_not_pad_a_huge_square() -> None:
    """The letterbox shrinks a 1 x 20000 strip before padding: a small allocation, and the
    box geometry still refers to the original pixels."""
    import tracemalloc

    from models.nudenet import MAX_PAD_SIDE, Letterbox

    strip = np.zeros((1, 20000, 3), dtype=np.uint8)
    tracemalloc.start()
    tensor, meta = Letterbox()([strip])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert tensor.shape == (1, 3, 320, 320)
    assert int(meta.sides[0]) == 20000 and int(meta.widths[0]) == 20000
    assert peak < 3 * MAX_PAD_SIDE * MAX_PAD_SIDE * 2  # never the 1.2 GB square
