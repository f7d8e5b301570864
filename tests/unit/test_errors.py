"""Every error class of pipeline, models and review has a stable code, a kind that both surfaces
map, and a default message; the API's status table and the CLI's exit-code table map kinds as
the README documents (issue 12, item 4)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest
from sqlalchemy.exc import OperationalError

import models
import pipeline
import review
from models.errors import (
    CodedError,
    DatasetError,
    DuplicateModel,
    ModelDigestMismatch,
    ModelNotRegistered,
)
from pipeline.api.errors import HTTP_STATUS, from_exception
from pipeline.apikeys import AuthMissing, Forbidden, RateLimited
from pipeline.batching import Overloaded
from pipeline.blobs import BlobNotFound
from pipeline.cli._common import EXIT_CODES, Exit, failure
from pipeline.errors import (
    DependencyUnavailable,
    ErrorKind,
    ImageCorrupt,
    ImageTooLarge,
    ImageUnsupportedType,
    UnknownContextField,
)
from review.errors import (
    AuditChainBroken,
    ExposureCapReached,
    NotClaimant,
    NotFound,
    ReviewError,
    UnknownReviewer,
)

#: optional extras: a module that needs one is not importable without it (and so defines no
#: error a user can meet)
OPTIONAL = {"torch", "torchvision", "onnx", "onnxscript", "label_studio_sdk"}
#: what the kind replaced; no error class may carry them (see _PENDING)
RETIRED = ("http_status", "exit_code", "headers", "user_error")
#: classes in files other helpers own during issue 12 that still say http_status/exit_code;
#: the kind each must get (the lead applies it when merging, then empties this table).  The test
#: checks the kind reproduces today's status and exit code, and fails once an entry is stale.
_PENDING: dict[str, ErrorKind] = {}
_CODE = re.compile(r"[a-z][a-z_]*(\.[a-z][a-z_]*)*")


def _import_everything() -> None:
    for pkg in (pipeline, models, review):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if info.name.startswith("review.migrations") or info.name.endswith(".__main__"):
                continue  # alembic's scripts and entry points run when imported
            try:
                importlib.import_module(info.name)
            except ImportError as exc:
                if (exc.name or "").split(".")[0] not in OPTIONAL:
                    raise


def _ours(cls: type) -> bool:
    return cls.__module__.split(".")[0] in ("pipeline", "models", "review")


def _subclasses(root: type[BaseException]) -> set[type[BaseException]]:
    found, todo = set(), [root]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return found


_import_everything()
EVERY_EXCEPTION = sorted((c for c in _subclasses(BaseException) if _ours(c)),
                         key=lambda c: f"{c.__module__}.{c.__qualname__}")
ERRORS = [c for c in EVERY_EXCEPTION if c is not CodedError]


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def test_the_walk_finds_the_three_hierarchies() -> None:
    names = {_name(c) for c in ERRORS}
    # one from each package and each module that defines errors outside an errors.py
    assert {"pipeline.errors.ImageCorrupt", "models.errors.DatasetError",
            "review.errors.NotClaimant", "pipeline.apikeys.RateLimited",
            "pipeline.blobs.BlobNotFound", "review.banks.BadBankEntry",
            "pipeline.labelstudio.client.LabelStudioUnavailable",
            "pipeline.api.errors.NotReady", "models.registry.UnknownScorer"} <= names


@pytest.mark.parametrize("cls", ERRORS, ids=_name)
def test_every_error_has_a_code_a_kind_both_surfaces_map_and_a_default_message(
    cls: type[BaseException],
) -> None:
    assert issubclass(cls, CodedError | ReviewError), "one of the two error roots, nothing else"
    assert isinstance(cls.code, str) and _CODE.fullmatch(cls.code), cls.code
    kind = ErrorKind(cls.kind)  # ValueError for a word outside the vocabulary
    assert kind in HTTP_STATUS and kind in EXIT_CODES
    doc = cls.__dict__.get("__doc__")
    if doc:
        assert doc.strip()
        params = inspect.signature(cls).parameters.values()
        if all(p.default is not p.empty or p.kind is p.VAR_KEYWORD for p in params):
            assert cls().detail == doc.strip()  # the docstring is the default message


@pytest.mark.parametrize("cls", ERRORS, ids=_name)
def test_no_error_knows_its_http_status_or_exit_code(cls: type[BaseException]) -> None:
    leftovers = {a: getattr(cls, a) for a in RETIRED if hasattr(cls, a)}
    pending = _PENDING.get(_name(cls))
    if pending is None:
        assert not leftovers, f"{_name(cls)}: set `kind`, not {sorted(leftovers)}"
        return
    # a class still waiting for its hunk: the kind it will get must keep today's behaviour
    assert leftovers, f"{_name(cls)} no longer needs its _PENDING entry; remove it"
    if "http_status" in leftovers:
        assert HTTP_STATUS[pending] == leftovers["http_status"]
    if "exit_code" in leftovers:
        assert EXIT_CODES[pending] == leftovers["exit_code"]


def test_a_code_means_one_kind() -> None:
    kinds: dict[str, set[str]] = {}
    for cls in ERRORS:
        if _name(cls) not in _PENDING:
            kinds.setdefault(cls.code, set()).add(str(cls.kind))
    assert {code: k for code, k in kinds.items() if len(k) > 1} == {}


def test_both_tables_cover_exactly_the_vocabulary() -> None:
    assert set(HTTP_STATUS) == set(EXIT_CODES) == set(ErrorKind)
    assert set(EXIT_CODES.values()) == {Exit.USER_ERROR, Exit.DEPENDENCY, Exit.CHECK_FAILED}


# (error, HTTP status, API code, headers that must be there (None: must be absent), exit code)
SAMPLE = [
    (ImageTooLarge(), 413, "image.too_large", {}, 2),
    (ImageUnsupportedType(), 415, "image.unsupported_type", {}, 2),
    (ImageCorrupt(), 422, "image.corrupt", {}, 2),
    (UnknownContextField(), 400, "context.invalid", {}, 2),
    (AuthMissing(), 401, "auth.missing", {"www-authenticate": "Bearer"}, 2),
    (Forbidden(), 403, "auth.forbidden", {"www-authenticate": None}, 2),
    (UnknownReviewer(), 403, "review.unknown_reviewer", {}, 2),
    (NotFound(), 404, "review.not_found", {}, 2),
    (NotClaimant(), 409, "review.not_claimant", {}, 2),
    (RateLimited(3.2), 429, "rate_limited", {"retry-after": "4"}, 2),
    (ExposureCapReached(), 429, "review.exposure_cap", {"retry-after": None}, 2),
    (Overloaded(1.0), 503, "overloaded", {"retry-after": "1"}, 3),
    (DependencyUnavailable(), 503, "dependency.unavailable", {"retry-after": "5"}, 3),
    (ModelDigestMismatch(), 503, "model.digest_mismatch", {"retry-after": "5"}, 3),
    # the user's input, not a dependency: the API answered 503 here before issue 12
    (DatasetError(), 400, "model.dataset_invalid", {"retry-after": None}, 2),
    (DuplicateModel(), 409, "model.duplicate", {}, 2),
    (ModelNotRegistered(), 404, "model.not_registered", {}, 2),
    (AuditChainBroken(), 409, "audit.chain_broken", {}, 1),
    # the store's own code stays in the API's log; the CLI is a local operator's tool
    (BlobNotFound(), 503, "dependency.blob_store", {"retry-after": "5"}, 3),
]


@pytest.mark.parametrize(("exc", "status", "code", "headers", "exit_code"), SAMPLE,
                         ids=[type(s[0]).__name__ for s in SAMPLE])
def test_the_api_and_the_cli_map_kinds_as_documented(
    exc: CodedError | ReviewError, status: int, code: str,
    headers: dict[str, str | None], exit_code: int,
) -> None:
    response = from_exception(exc)
    assert response is not None
    assert response.status_code == status
    assert response.body.startswith(f'{{"code":"{code}"'.encode())
    for name, value in headers.items():
        assert response.headers.get(name) == value, name
    assert failure(exc) == (exc.code, exc.detail, exit_code)


def test_the_database_and_bad_settings_map_outside_the_hierarchies() -> None:
    down = OperationalError("SELECT 1", {}, ConnectionRefusedError("refused"))
    response = from_exception(down)
    assert response is not None and response.status_code == 503
    found = failure(down)
    assert found is not None and found[0] == "dependency.database" and found[2] == 3
    assert failure(RuntimeError("a bug")) is None  # a bug is not dressed up as a refusal


def test_a_missing_extra_is_a_dependency_error_that_names_it() -> None:
    from models.classifier import torch_extra
    from models.errors import ModelDependencyMissing

    missing = r"^no_such_extra_module: install the torch extra"
    with pytest.raises(ModelDependencyMissing, match=missing) as exc, torch_extra():
        import no_such_extra_module  # noqa: F401
    assert failure(exc.value) == (exc.value.code, exc.value.detail, Exit.DEPENDENCY)
