"""The model registry on disk: which exported classifiers exist, and which one serves.

Layout: `ROOT/registry.json` (the index, with a history of every change) and
`ROOT/NAME/VERSION/{model.onnx, card.json}`.  A name+version is registered once (a
duplicate is refused, as is the same file under a second version).  At most one entry is
`active` (its scores decide outcomes); entries marked `shadow` score the same traffic and
their scores are kept for comparison; the rest are `inactive`.  Activating a model makes the
previously active one a shadow, so the old and the new can be compared on live traffic
before the old one is retired.  A model that failed its training quality gate (its card says
`metrics.quality.passed: false`) is neither registered nor made active or shadow without
`force=True`, which the history records.  Every write holds an exclusive lock and replaces
the index atomically.  No torch.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from models.base import Scorer
from models.classifier import torch_extra
from models.classifier.card import CARD_FILE, ClassifierCard, locate, model_version
from models.classifier.onnx_scorer import OnnxClassifierScorer, read_verified
from models.classifier.shadow import ShadowScorer
from models.errors import (
    DuplicateModel,
    ModelError,
    ModelFileMissing,
    ModelNotRegistered,
    ModelNotRegistrable,
)

Status = Literal["active", "shadow", "inactive"]
STATUSES: tuple[str, ...] = ("active", "shadow", "inactive")
INDEX = "registry.json"
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


@dataclass(frozen=True)
class Entry:
    name: str
    version: str
    status: str
    sha256: str
    #: the scorer's model version (name@sha256:prefix): what every score carries
    model_version: str
    arch: str
    categories: tuple[str, ...]
    registered_at: str
    #: relative to the registry root
    path: str

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["categories"] = list(self.categories)
        d["ref"] = self.ref
        return d


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def check_registrable(card: ClassifierCard, *, what: str, force: bool = False) -> bool:
    """Refuse a model whose training failed the quality gate, unless forced; True if forced.

    Cards written before the gate existed carry no verdict and pass.
    """
    quality = card.metrics.get("quality")
    if not isinstance(quality, dict) or quality.get("passed", True):
        return False
    if force:
        return True
    failing = quality.get("failing") or {}
    raise ModelNotRegistrable(
        f"{what}: its training did not clear the quality gate (ROC AUC < "
        f"{quality.get('min_auc')} on {', '.join(sorted(failing)) or 'some category'}); "
        "retrain it, or pass force=True (--force) to override"
    )


class ModelRegistry:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    # -- the index ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write the index under an exclusive lock; written back on success."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                index = self._read()
                yield index
                self._write(index)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict[str, Any]:
        path = self.root / INDEX
        if not path.exists():
            return {"format": 1, "entries": [], "history": []}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"model registry index {path} is unreadable: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
            raise ModelError(f"model registry index {path} is not a registry")
        index: dict[str, Any] = data
        return index

    def _write(self, index: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".registry.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / INDEX)

    @staticmethod
    def _entry(raw: dict[str, Any]) -> Entry:
        return Entry(
            name=raw["name"], version=raw["version"], status=raw["status"],
            sha256=raw["sha256"], model_version=raw["model_version"], arch=raw["arch"],
            categories=tuple(raw["categories"]), registered_at=raw["registered_at"],
            path=raw["path"],
        )

    def entries(self) -> list[Entry]:
        return [self._entry(e) for e in self._read()["entries"]]

    def history(self) -> list[dict[str, Any]]:
        return list(self._read().get("history", []))

    def status_since(self, ref: str) -> dt.datetime | None:
        """When the entry last took the status it has now (None: never changed since the
        index began keeping history)."""
        entry = self.resolve(ref)
        for h in reversed(self.history()):
            if h.get("ref") == entry.ref and h.get("action") in (entry.status, "register"):
                return dt.datetime.fromisoformat(h["at"])
        return None

    # -- lookups --------------------------------------------------------------------------

    def resolve(self, ref: str) -> Entry:
        """`name@version`, `name@sha256:PREFIX` (a model version), or a bare `name` that has
        exactly one version."""
        return self._entry(self._find(self._read(), ref))

    def _find(self, index: dict[str, Any], ref: str) -> dict[str, Any]:
        name, sep, version = ref.partition("@")
        rows = [e for e in index["entries"] if e["name"] == name]
        if sep and version.startswith("sha256:"):
            prefix = version.removeprefix("sha256:")
            rows = [e for e in rows if prefix and e["sha256"].startswith(prefix)]
        elif sep:
            rows = [e for e in rows if e["version"] == version]
        if len(rows) == 1:
            found: dict[str, Any] = rows[0]
            return found
        if not rows:
            known = ", ".join(f"{e['name']}@{e['version']}" for e in index["entries"]) or "none"
            raise ModelNotRegistered(f"no registered model {ref!r} (registered: {known})")
        versions = ", ".join(e["version"] for e in rows)
        raise ModelNotRegistered(f"{ref!r} is ambiguous; name a version ({versions})")

    def active(self) -> Entry | None:
        rows = [e for e in self.entries() if e.status == "active"]
        return rows[0] if rows else None

    def shadows(self) -> list[Entry]:
        return [e for e in self.entries() if e.status == "shadow"]

    def directory(self, entry: Entry) -> Path:
        return self.root / entry.path

    # -- changes --------------------------------------------------------------------------

    def register(self, model: Path | str, *, version: str | None = None,
                 status: Status = "inactive", force: bool = False) -> Entry:
        """Copy an exported model (directory, ONNX file or card) in, verified by its card.

        A model that failed its training quality gate is refused unless `force`.
        """
        onnx_path, card = locate(Path(model))
        forced = check_registrable(card, what=card.name, force=force)
        blob = read_verified(onnx_path, card.onnx.sha256, what=card.name)
        del blob
        version = version or f"sha256-{card.onnx.sha256[:12]}"
        if not _VERSION.match(version):
            raise ModelError(f"version {version!r}: letters, digits, '.', '_', '+', '-' only")
        if status not in STATUSES:
            raise ModelError(f"status must be one of {', '.join(STATUSES)}")
        with self._locked() as index:
            for e in index["entries"]:
                if e["name"] == card.name and e["version"] == version:
                    raise DuplicateModel(
                        f"{card.name}@{version} is already registered; a version is never "
                        "replaced: register the new model under a new version"
                    )
                if e["name"] == card.name and e["sha256"] == card.onnx.sha256:
                    raise DuplicateModel(
                        f"this file is already registered as {e['name']}@{e['version']}"
                    )
            rel = f"{card.name}/{version}"
            dest = self.root / rel
            if dest.exists():
                raise DuplicateModel(f"{dest} already exists but is not in the index")
            staging = Path(tempfile.mkdtemp(dir=self.root, prefix=".incoming."))
            try:
                shutil.copyfile(onnx_path, staging / card.onnx.file)
                card.save(staging / CARD_FILE)
                # Re-verify the copy: what is registered is what was checked.
                read_verified(staging / card.onnx.file, card.onnx.sha256, what=card.name)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging, dest)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            if status == "active":
                self._demote_active(index)
            raw = {
                "name": card.name, "version": version, "status": status,
                "sha256": card.onnx.sha256, "model_version": model_version(card.name,
                                                                           card.onnx.sha256),
                "arch": card.arch, "categories": list(card.categories),
                "registered_at": _now(), "path": rel,
            }
            index["entries"].append(raw)
            index["history"].append({"at": raw["registered_at"], "action": "register",
                                     "ref": f"{card.name}@{version}", "status": status,
                                     **({"forced": "quality gate"} if forced else {})})
        return self._entry(raw)

    def _demote_active(self, index: dict[str, Any]) -> None:
        for e in index["entries"]:
            if e["status"] == "active":
                e["status"] = "shadow"
                index["history"].append({"at": _now(), "action": "shadow",
                                         "ref": f"{e['name']}@{e['version']}",
                                         "reason": "another model was activated"})

    def set_status(self, ref: str, status: Status, *, force: bool = False,
                   record: Mapping[str, Any] | None = None) -> Entry:
        """Change an entry's status; active or shadow needs a model that passed its gate.

        `record` goes into the history entry as it is (a promotion's checks, who asked for it
        and why); it cannot overwrite the entry's own keys."""
        if status not in STATUSES:
            raise ModelError(f"status must be one of {', '.join(STATUSES)}")
        with self._locked() as index:
            row = self._find(index, ref)
            forced = False
            if status in ("active", "shadow") and row["status"] != status:
                # Even a shadow scores live traffic (and its scores are kept): gate it too.
                entry = self._entry(row)
                card = ClassifierCard.load(self.directory(entry) / CARD_FILE)
                forced = check_registrable(card, what=entry.ref, force=force)
            if status == "active" and row["status"] != "active":
                # Check the files before they serve: a corrupt model must not become active.
                entry = self._entry(row)
                card = ClassifierCard.load(self.directory(entry) / CARD_FILE)
                read_verified(self.directory(entry) / card.onnx.file, row["sha256"],
                              what=entry.ref)
                self._demote_active(index)
            row["status"] = status
            index["history"].append({**dict(record or {}), "at": _now(), "action": status,
                                     "ref": f"{row['name']}@{row['version']}",
                                     **({"forced": "quality gate"} if forced else {})})
            return self._entry(row)

    def activate(self, ref: str, *, force: bool = False) -> Entry:
        return self.set_status(ref, "active", force=force)

    def shadow(self, ref: str, *, force: bool = False) -> Entry:
        return self.set_status(ref, "shadow", force=force)

    def deactivate(self, ref: str) -> Entry:
        return self.set_status(ref, "inactive")

    # -- loading --------------------------------------------------------------------------

    def load(self, ref: str, **opts: Any) -> OnnxClassifierScorer:
        """A scorer for one entry; the digest is checked against the index and the card."""
        entry = self.resolve(ref)
        scorer = OnnxClassifierScorer(model=self.directory(entry), **opts)
        if scorer.digest != entry.sha256:
            raise ModelError(f"{entry.ref}: the card's digest differs from the registry's")
        return scorer

    def serving_scorer(self, **opts: Any) -> Scorer:
        """The active model, wrapped with its shadows when there are any."""
        active = self.active()
        if active is None:
            raise ModelNotRegistered(
                f"no active model in {self.root}; `lookfirst models activate NAME@VERSION`"
            )
        scorer = self.load(active.ref, **opts)
        shadows = [self.load(e.ref, **opts) for e in self.shadows()]
        return ShadowScorer(scorer, shadows) if shadows else scorer


def load_model(model: str, *, registry: Path | str, threads: int = 0) -> Scorer:
    """A checkpoint (.pt, scored in torch), an exported model (directory, .onnx or card), or
    NAME@VERSION from the registry at `registry`."""
    path = Path(model)
    if path.suffix == ".pt":
        if not path.is_file():
            raise ModelFileMissing(f"checkpoint not found: {path}")
        with torch_extra():
            from models.classifier.torch_scorer import TorchClassifierScorer

        return TorchClassifierScorer(checkpoint=path, threads=threads)
    if path.exists():
        return OnnxClassifierScorer(model=path, threads=threads)
    return ModelRegistry(registry).load(model, threads=threads)


def registry_scorer(*, root: Path | str, threads: int = 0, **opts: Any) -> Scorer:
    """The registry's serving scorer (active + shadows): a factory for models.registry."""
    return ModelRegistry(root).serving_scorer(threads=threads, **opts)
