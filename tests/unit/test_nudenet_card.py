"""The NudeNet 320n model card is complete and consistent; no model is loaded or run."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import nudenet.nudenet as nudenet_source
import pytest

from models.errors import ModelError
from models.nudenet import ALLOWED_CATEGORIES, NudeNetCard, default_card_path
from models.registry import UnknownScorer, available, load_scorer, register

EXPLICIT = {
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "BUTTOCKS_EXPOSED",
}
PARTIAL = {"FEMALE_GENITALIA_COVERED", "FEMALE_BREAST_COVERED", "BUTTOCKS_COVERED", "ANUS_COVERED"}
SKIN = {"BELLY_EXPOSED", "ARMPITS_EXPOSED", "FEET_EXPOSED", "MALE_BREAST_EXPOSED"}
FACE = {"FACE_FEMALE", "FACE_MALE"}


@pytest.fixture(scope="module")
def raw_card() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(default_card_path().read_text(encoding="utf-8"))
    return data


def test_card_ships_next_to_the_module() -> None:
    path = default_card_path()
    assert path == Path(__file__).parents[2] / "models" / "cards" / "nudenet-320n.json"


def test_labels_are_the_packages_18_in_output_order(raw_card: dict[str, Any]) -> None:
    labels = raw_card["labels"]
    assert len(labels) == 18 == len(set(labels))
    # The model's output rows follow NudeNet's own label list; a reordering would mislabel
    # every detection, so compare against the package source rather than a copy.
    assert labels == getattr(nudenet_source, "__labels")


def test_category_map_covers_exactly_the_labels(raw_card: dict[str, Any]) -> None:
    assert set(raw_card["category_map"]) == set(raw_card["labels"])
    values = {v for v in raw_card["category_map"].values() if v is not None}
    assert values <= set(ALLOWED_CATEGORIES)
    assert set(raw_card["categories"]) == values
    assert len(raw_card["categories"]) == len(values)


def test_category_map_follows_policy(raw_card: dict[str, Any]) -> None:
    expected = {
        **dict.fromkeys(EXPLICIT, "nudity.explicit"),
        **dict.fromkeys(PARTIAL, "nudity.partial"),
        **dict.fromkeys(SKIN, "skin.exposed"),
        **dict.fromkeys(FACE, "person.face"),
    }
    for label, category in raw_card["category_map"].items():
        assert category == expected.get(label), label
    ignored = {label for label, c in raw_card["category_map"].items() if c is None}
    assert ignored == {"BELLY_COVERED", "FEET_COVERED", "ARMPITS_COVERED"}


def test_thresholds_and_preprocessing_match_nudenet(raw_card: dict[str, Any]) -> None:
    post = raw_card["postprocessing"]
    assert (post["candidate_threshold"], post["keep_threshold"], post["nms_iou"]) == (
        0.2,
        0.25,
        0.45,
    )
    assert raw_card["input"]["size"] == 320
    assert raw_card["preprocessing"]["color_order"] == "BGR"
    assert raw_card["preprocessing"]["scale"] == 1 / 255


def test_card_names_source_license_and_digest(raw_card: dict[str, Any]) -> None:
    assert raw_card["name"] == "nudenet-320n"
    source = raw_card["source"]
    assert (source["package"], source["package_version"], source["file"]) == (
        "nudenet",
        "3.4.2",
        "320n.onnx",
    )
    assert raw_card["license"]["package_metadata"] == "MIT"
    assert raw_card["license"]["repository"] == "AGPL-3.0"
    sha = raw_card["weights"]["sha256"]
    assert len(sha) == 64 and set(sha) <= set("0123456789abcdef")


def test_card_loads_into_typed_form(raw_card: dict[str, Any]) -> None:
    card = NudeNetCard.from_dict(raw_card)
    assert card.categories == ("nudity.explicit", "nudity.partial", "skin.exposed", "person.face")
    assert card.labels == tuple(raw_card["labels"])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c["category_map"].update({"FACE_MALE": "person.faces"}), "unknown categories"),
        (lambda c: c["category_map"].pop("FEET_COVERED"), "missing=['FEET_COVERED']"),
        (lambda c: c["category_map"].update({"HAND": None}), "extra=['HAND']"),
        (lambda c: c["labels"].pop(), "18 distinct"),
        (lambda c: c["weights"].update({"sha256": "abc"}), "sha256"),
        (lambda c: c["postprocessing"].update({"candidate_threshold": 0.3}), "threshold"),
        (lambda c: c["categories"].remove("skin.exposed"), "exactly once"),
        (lambda c: c["preprocessing"].update({"color_order": "RGB"}), "BGR"),
    ],
)
def test_invalid_cards_are_refused(raw_card: dict[str, Any], mutate: Any, message: str) -> None:
    bad = copy.deepcopy(raw_card)
    mutate(bad)
    with pytest.raises(ValueError, match=re.escape(message)):
        NudeNetCard.from_dict(bad)


def test_registry_knows_nudenet_and_refuses_unknown_or_duplicate_names() -> None:
    assert "nudenet-320n" in available()
    with pytest.raises(UnknownScorer, match="unknown scorer 'nope'") as info:
        load_scorer("nope")
    assert isinstance(info.value, ModelError) and info.value.code == "model.unknown"
    with pytest.raises(ValueError, match="already registered"):
        register("nudenet-320n", lambda **_: pytest.fail("never called"))
