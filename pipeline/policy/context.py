"""What the uploader told us about an upload (`Context`), and parsing it from an API body or
from CLI `key=value` pairs; `CONTEXT_FIELDS` says what a policy modifier may match on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import UnknownContextField


class Context(BaseModel):
    """What the uploader told us about an upload; modifiers in the policy match on these."""

    # strict: a context moves thresholds, so "1" must not quietly become True through the API.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    medical_sharing: bool = False
    recipient_verified_provider: bool = False
    audience: Literal["private", "direct", "followers", "public"] = "private"
    account_age_days: int | None = Field(default=None, ge=0)
    prior_strikes: int = Field(default=0, ge=0)

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Context:
        """Validate a mapping (an API body); errors are `UnknownContextField` naming the field."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise UnknownContextField(_context_error_detail(exc)) from None

    @classmethod
    def from_pairs(cls, pairs: Sequence[str]) -> Context:
        """Parse CLI `key=value` strings (`medical_sharing=yes`, `account_age_days=3`)."""
        values: dict[str, Any] = {}
        for pair in pairs:
            key, sep, raw = pair.partition("=")
            key, raw = key.strip(), raw.strip()
            if not sep or not key:
                raise UnknownContextField(f"context {pair!r}: expected key=value")
            spec = CONTEXT_FIELDS.get(key)
            if spec is None:
                raise UnknownContextField(_unknown_field_detail(key))
            if key in values:
                raise UnknownContextField(f"context field {key!r}: given more than once")
            values[key] = spec.from_text(key, raw)
        return cls.parse(values)


def _unknown_field_detail(key: str) -> str:
    return f"unknown context field {key!r} (known: {', '.join(CONTEXT_FIELDS)})"


def _context_error_detail(exc: ValidationError) -> str:
    details = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"]) or "context"
        if err["type"] == "extra_forbidden":
            details.append(_unknown_field_detail(name))
        else:
            details.append(f"context field {name!r}: {err['msg']}")
    return "; ".join(details)


_FieldKind = Literal["bool", "int", "optional_int", "choice"]
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_NULL = frozenset({"", "none", "null"})


@dataclass(frozen=True, slots=True)
class _ContextField:
    kind: _FieldKind
    choices: tuple[str, ...] = ()

    def from_text(self, key: str, raw: str) -> object:
        text = raw.lower()
        if self.kind == "bool":
            if text in _TRUE or text in _FALSE:
                return text in _TRUE
            raise UnknownContextField(
                f"context field {key!r}: {raw!r} is not a boolean (true/false/1/0/yes/no)"
            )
        if self.kind == "choice":
            return raw  # the model's Literal names the choices when it refuses one
        if self.kind == "optional_int" and text in _NULL:
            return None
        try:
            return int(raw)
        except ValueError:
            raise UnknownContextField(
                f"context field {key!r}: {raw!r} is not a whole number"
            ) from None

    def accepts(self, value: object) -> bool:
        """Whether a policy's `when` operand has this field's type."""
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "choice":
            return isinstance(value, str) and value in self.choices
        if value is None:
            return self.kind == "optional_int"
        return isinstance(value, int) and not isinstance(value, bool)


def _field_kind(annotation: object) -> _ContextField:
    if annotation is bool:
        return _ContextField("bool")
    if annotation is int:
        return _ContextField("int")
    if get_origin(annotation) is Literal:
        return _ContextField("choice", tuple(str(a) for a in get_args(annotation)))
    if set(get_args(annotation)) == {int, type(None)}:
        return _ContextField("optional_int")
    raise TypeError(f"no policy kind for context annotation {annotation!r}")  # pragma: no cover


#: derived from the model so a new Context field is usable in policies (or fails loudly here)
CONTEXT_FIELDS: dict[str, _ContextField] = {
    name: _field_kind(info.annotation) for name, info in Context.model_fields.items()
}
