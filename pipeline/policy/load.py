"""Loading a policy: YAML parsed and validated, with errors that name the field path and the
YAML line; the bundled policies in `pipeline/policies/`."""

from __future__ import annotations

import datetime
import hashlib
import math
import re
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import PolicyError
from pipeline.policy.context import CONTEXT_FIELDS
from pipeline.policy.model import (
    SEVERITIES,
    SEVERITY_RANK,
    BankRules,
    CategorySpec,
    Modifier,
    Policy,
    PromotionRules,
    QueueSpec,
    Thresholds,
)
from review import REVERSAL_KINDS, ActionKind, Verdict

#: the policies that ship with the package (`default`, and `demo` for the bundled samples)
POLICIES_DIR = Path(__file__).resolve().parent.parent / "policies"

_PathT = tuple[str | int, ...]


def _dotted(path: _PathT) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


class _Lines:
    """Finds the YAML line of a key path in the composed node tree, for error messages."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root

    def line(self, path: _PathT) -> int:
        node = self.root
        line = node.start_mark.line + 1 if node is not None else 1
        for p in path:
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if isinstance(k, yaml.ScalarNode) and k.value == str(p):
                        line, node = k.start_mark.line + 1, v
                        break
                else:
                    return line  # a missing key: point at its parent
            elif isinstance(node, yaml.SequenceNode) and isinstance(p, int) and p < len(node.value):
                node = node.value[p]
                line = node.start_mark.line + 1
            else:
                return line
        return line


def _find_duplicates(node: yaml.Node | None, source: str) -> None:
    """safe_load keeps the last of two equal keys; in a policy that hides a threshold."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value != "<<":
                if k.value in seen:
                    raise PolicyError(
                        f"{source} line {k.start_mark.line + 1}: duplicate key {k.value!r}"
                    )
                seen.add(k.value)
            _find_duplicates(v, source)
    elif isinstance(node, yaml.SequenceNode):
        for v in node.value:
            _find_duplicates(v, source)


class _Validator:
    def __init__(self, source: str, lines: _Lines) -> None:
        self.source = source
        self.lines = lines

    def fail(self, path: _PathT, message: str) -> PolicyError:
        line = self.lines.line(path)
        return PolicyError(f"{self.source} line {line}: {_dotted(path)}: {message}")

    def mapping(
        self,
        value: object,
        path: _PathT,
        *,
        required: Sequence[str] = (),
        optional: Sequence[str] = (),
        free_keys: bool = False,
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, "must be a mapping")
        known = (*required, *optional)
        for key in value:
            if not isinstance(key, str):
                raise self.fail(path, f"key {key!r} must be a string")
            if not free_keys and key not in known:
                raise self.fail(path + (key,), f"unknown key (expected one of: {', '.join(known)})")
        for key in required:
            if key not in value:
                raise self.fail(path + (key,), "required")
        return value

    def string(self, value: object, path: _PathT, *, allow_empty: bool = False) -> str:
        if not isinstance(value, str):
            hint = " (quote it)" if isinstance(value, int | float) else ""
            raise self.fail(path, f"must be a string{hint}")
        if not allow_empty and not value.strip():
            raise self.fail(path, "must not be empty")
        return value

    def number(self, value: object, path: _PathT, lo: float, hi: float) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise self.fail(path, "must be a number")
        if not lo <= value <= hi:
            raise self.fail(path, f"must be between {lo:g} and {hi:g}")
        return float(value)

    def integer(self, value: object, path: _PathT, lo: int, hi: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, "must be a whole number")
        if value < lo or (hi is not None and value > hi):
            raise self.fail(path, f"must be {lo} or more" if hi is None else f"must be {lo}..{hi}")
        return value

    def boolean(self, value: object, path: _PathT) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, "must be true or false")
        return value

    def queue_ref(self, value: object, path: _PathT, queues: Mapping[str, object]) -> str:
        name = self.string(value, path)
        if name not in queues:
            raise self.fail(path, f"unknown queue {name!r} (defined: {', '.join(queues)})")
        return name

    def actions(self, value: object, path: _PathT, *, refuse: Mapping[str, str]) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(path, "must be a list of actions")
        known = {a.value for a in ActionKind}
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or item not in known:
                raise self.fail(
                    path + (i,), f"unknown action {item!r} (known: {', '.join(sorted(known))})"
                )
            if item in refuse:
                raise self.fail(path + (i,), f"{item!r} {refuse[item]}")
            if item not in out:
                out.append(item)
        return tuple(out)


_TOP_REQUIRED = ("version", "name", "categories", "queues", "special_queues",
                 "severity_priority", "verdicts")
_TOP_OPTIONAL = ("description", "modifiers", "urgent_actions", "two_person_severity",
                 "promotion", "banks")


def policy_from_text(text: str, *, source: str = "<string>") -> Policy:
    """Parse and validate a policy; a `PolicyError` names the field path and the YAML line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        _find_duplicates(root, source)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise PolicyError(f"{source}{where}: not valid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}: not valid YAML: {exc}") from None
    v = _Validator(source, _Lines(root))
    return _build(v, data, source, hashlib.sha256(text.encode()).hexdigest())


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{p}: cannot read the policy: {exc}") from None
    return policy_from_text(text, source=str(path))


def bundled_policy(name: str = "default") -> Policy:
    """One of the policies shipped in `pipeline/policies/` (`default`, `demo`)."""
    path = POLICIES_DIR / f"{name}.yaml"
    if not re.fullmatch(r"[a-z0-9_-]+", name) or not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in POLICIES_DIR.glob("*.yaml")))
        raise PolicyError(f"no bundled policy {name!r} (shipped: {shipped})")
    return load_policy(path)


def _build(v: _Validator, data: object, source: str, digest: str) -> Policy:
    top = v.mapping(data, (), required=_TOP_REQUIRED, optional=_TOP_OPTIONAL)
    version = v.string(top["version"], ("version",))
    name = v.string(top["name"], ("name",))
    description = v.string(top.get("description", ""), ("description",), allow_empty=True)

    queues = _queues(v, top["queues"])
    categories = _categories(v, top["categories"], queues)
    special = _special_queues(v, top["special_queues"], queues)
    modifiers = _modifiers(v, top.get("modifiers", []), queues)

    sp_raw = v.mapping(top["severity_priority"], ("severity_priority",), required=SEVERITIES)
    severity_priority = {
        s: v.integer(sp_raw[s], ("severity_priority", s), 0) for s in SEVERITIES
    }
    for lower, higher in zip(SEVERITIES, SEVERITIES[1:], strict=False):
        if severity_priority[higher] < severity_priority[lower]:
            raise v.fail(("severity_priority", higher), f"must not be below {lower}'s priority")

    actions_by_severity, verdict_actions = _verdicts(v, top["verdicts"])

    urgent: frozenset[str] = frozenset(
        v.actions(top.get("urgent_actions", []), ("urgent_actions",), refuse={})
    )

    two_person: str | None = top.get("two_person_severity")
    if two_person is not None:
        if two_person not in SEVERITY_RANK:
            raise v.fail(("two_person_severity",), f"must be one of {', '.join(SEVERITIES)}")
        # Severe content must reach two people through its own queue; checked here, once,
        # rather than trusted to every queue author.
        for cname, cat in categories.items():
            severe = SEVERITY_RANK[cat.severity] >= SEVERITY_RANK[two_person]
            if severe and queues[cat.queue].reviewers_required < 2:
                raise v.fail(
                    ("categories", cname, "queue"),
                    f"{cat.severity} is at or above two_person_severity ({two_person}): "
                    f"queue {cat.queue!r} must have reviewers_required: 2",
                )
        if queues[special["bank_match"]].reviewers_required < 2:
            raise v.fail(
                ("special_queues", "bank_match"),
                "a known-violating bank match is critical: its queue must have "
                "reviewers_required: 2",
            )

    return Policy(
        name=name,
        version=version,
        description=description,
        categories=types.MappingProxyType(categories),
        queues=types.MappingProxyType(queues),
        modifiers=modifiers,
        severity_priority=types.MappingProxyType(severity_priority),
        qa_queue=special["qa"],
        appeals_queue=special["appeals"],
        escalation_queue=special["escalation"],
        bank_match_queue=special["bank_match"],
        urgent_actions=urgent,
        two_person_severity=two_person,
        actions_by_severity=types.MappingProxyType(actions_by_severity),
        verdict_actions=types.MappingProxyType(verdict_actions),
        source=source,
        digest=digest,
        promotion=_promotion(v, top.get("promotion")),
        banks=_banks(v, top.get("banks")),
    )


def _queues(v: _Validator, raw: object) -> dict[str, QueueSpec]:
    path: _PathT = ("queues",)
    qmap = v.mapping(raw, path, free_keys=True)
    if not qmap:
        raise v.fail(path, "must define at least one queue")
    out: dict[str, QueueSpec] = {}
    pending_escalations: list[tuple[_PathT, object]] = []
    for qname, body in qmap.items():
        qp = path + (qname,)
        q = v.mapping(
            body, qp, required=("sla_hours", "reviewers_required"),
            optional=("role", "exposure_cap", "escalate_to", "description"),
        )
        sla = v.number(q["sla_hours"], qp + ("sla_hours",), 0.01, 24 * 365)
        reviewers = v.integer(q["reviewers_required"], qp + ("reviewers_required",), 1, 2)
        role = None if q.get("role") is None else v.string(q["role"], qp + ("role",))
        cap: int | None = None
        window: datetime.timedelta | None = None
        if q.get("exposure_cap") is not None:
            cp = qp + ("exposure_cap",)
            c = v.mapping(q["exposure_cap"], cp, required=("count", "window_hours"))
            cap = v.integer(c["count"], cp + ("count",), 1)
            window = datetime.timedelta(
                hours=v.number(c["window_hours"], cp + ("window_hours",), 0.01, 24 * 7)
            )
        if q.get("escalate_to") is not None:
            pending_escalations.append((qp + ("escalate_to",), q["escalate_to"]))
        out[qname] = QueueSpec(
            name=qname,
            sla=datetime.timedelta(hours=sla),
            role=role,
            reviewers_required=reviewers,
            exposure_cap=cap,
            exposure_window=window,
            escalate_to=q.get("escalate_to"),
            description=v.string(q.get("description", ""), qp + ("description",), allow_empty=True),
        )
    for ep, target in pending_escalations:  # may name a queue defined further down
        v.queue_ref(target, ep, out)
    return out


def _categories(
    v: _Validator, raw: object, queues: Mapping[str, QueueSpec]
) -> dict[str, CategorySpec]:
    path: _PathT = ("categories",)
    cmap = v.mapping(raw, path, free_keys=True)
    if not cmap:
        raise v.fail(path, "must define at least one category")
    out: dict[str, CategorySpec] = {}
    for cname, body in cmap.items():
        cp = path + (cname,)
        c = v.mapping(
            body, cp, required=("severity", "thresholds", "queue"),
            optional=("description", "qa_sample_rate"),
        )
        severity = c["severity"]
        if severity not in SEVERITY_RANK:
            raise v.fail(cp + ("severity",), f"must be one of {', '.join(SEVERITIES)}")
        tp = cp + ("thresholds",)
        t = v.mapping(c["thresholds"], tp, required=("review", "hold"))
        review = v.number(t["review"], tp + ("review",), 0.0, 1.0)
        hold = None if t["hold"] is None else v.number(t["hold"], tp + ("hold",), 0.0, 1.0)
        if hold is not None and hold < review:
            raise v.fail(tp + ("hold",), f"must be at least the review threshold ({review:g})")
        out[cname] = CategorySpec(
            name=cname,
            severity=severity,
            description=v.string(c.get("description", ""), cp + ("description",), allow_empty=True),
            thresholds=Thresholds(review=review, hold=hold),
            qa_sample_rate=v.number(c.get("qa_sample_rate", 0.0), cp + ("qa_sample_rate",), 0, 1),
            queue=v.queue_ref(c["queue"], cp + ("queue",), queues),
        )
    return out


def _special_queues(
    v: _Validator, raw: object, queues: Mapping[str, QueueSpec]
) -> dict[str, str]:
    path: _PathT = ("special_queues",)
    s = v.mapping(raw, path, required=("qa", "appeals", "escalation"), optional=("bank_match",))
    out = {k: v.queue_ref(s[k], path + (k,), queues) for k in ("qa", "appeals", "escalation")}
    out["bank_match"] = (
        v.queue_ref(s["bank_match"], path + ("bank_match",), queues)
        if "bank_match" in s
        else out["escalation"]
    )
    return out


def _modifiers(
    v: _Validator, raw: object, queues: Mapping[str, QueueSpec]
) -> tuple[Modifier, ...]:
    path: _PathT = ("modifiers",)
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise v.fail(path, "must be a list of modifiers")
    out: list[Modifier] = []
    names: set[str] = set()
    for i, body in enumerate(raw):
        mp = path + (i,)
        m = v.mapping(
            body, mp, required=("name", "when"),
            optional=("threshold_delta", "disable_hold", "route_to", "priority_delta", "note"),
        )
        name = v.string(m["name"], mp + ("name",))
        if name in names:
            raise v.fail(mp + ("name",), f"modifier {name!r} is defined twice")
        names.add(name)
        field_name, conditions = _when(v, m["when"], mp + ("when",))
        review_delta = hold_delta = 0.0
        if m.get("threshold_delta") is not None:
            dp = mp + ("threshold_delta",)
            d = v.mapping(m["threshold_delta"], dp, optional=("review", "hold"))
            review_delta = v.number(d.get("review", 0.0), dp + ("review",), -1.0, 1.0)
            hold_delta = v.number(d.get("hold", 0.0), dp + ("hold",), -1.0, 1.0)
        disable_hold = v.boolean(m.get("disable_hold", False), mp + ("disable_hold",))
        route_to = None
        if m.get("route_to") is not None:
            route_to = v.queue_ref(m["route_to"], mp + ("route_to",), queues)
            if disable_hold and queues[route_to].reviewers_required > 1:
                # DESIGN.md: medical sharing never escalates straight to the two-person
                # severe queue unless a hash bank matched.
                raise v.fail(
                    mp + ("route_to",),
                    "a modifier that disables the automatic hold protects the uploader; it "
                    f"must not route to two-person queue {route_to!r}",
                )
        out.append(
            Modifier(
                name=name,
                field=field_name,
                conditions=conditions,
                review_delta=review_delta,
                hold_delta=hold_delta,
                disable_hold=disable_hold,
                route_to=route_to,
                priority_delta=v.integer(
                    m.get("priority_delta", 0), mp + ("priority_delta",), -1000, 1000
                ),
                note=v.string(m.get("note", ""), mp + ("note",), allow_empty=True),
            )
        )
    return tuple(out)


def _when(v: _Validator, raw: object, path: _PathT) -> tuple[str, tuple[tuple[str, Any], ...]]:
    w = v.mapping(raw, path, free_keys=True)
    # One field per modifier keeps each threshold move attributable to one fact in the
    # statement of reasons; combine facts by writing two modifiers.
    if len(w) != 1:
        raise v.fail(path, "must name exactly one context field")
    ((fname, cond),) = w.items()
    fp = path + (fname,)
    spec = CONTEXT_FIELDS.get(fname)
    if spec is None:
        raise v.fail(fp, f"unknown context field (known: {', '.join(CONTEXT_FIELDS)})")
    ordered = spec.kind in ("int", "optional_int")
    allowed = ("eq", "in", "lt", "lte", "gt", "gte") if ordered else ("eq", "in")
    raw_ops: dict[str, Any] = cond if isinstance(cond, dict) else {"eq": cond}
    if not raw_ops:
        raise v.fail(fp, "must give a value or at least one operator")
    expected = (
        f"one of {', '.join(spec.choices)}" if spec.kind == "choice"
        else "true or false" if spec.kind == "bool"
        else "a whole number" + (" or null" if spec.kind == "optional_int" else "")
    )
    conditions: list[tuple[str, Any]] = []
    for op, operand in raw_ops.items():
        op_path = fp + (op,) if isinstance(cond, dict) else fp
        if op not in allowed:
            raise v.fail(op_path, f"unknown operator for {fname} (allowed: {', '.join(allowed)})")
        if op == "in":
            if not isinstance(operand, list) or not operand:
                raise v.fail(op_path, "must be a non-empty list")
            for j, item in enumerate(operand):
                if not spec.accepts(item):
                    raise v.fail(op_path + (j,), f"must be {expected}")
            conditions.append((op, tuple(operand)))
        else:
            if not spec.accepts(operand) or (op != "eq" and operand is None):
                raise v.fail(op_path, f"must be {expected}")
            conditions.append((op, operand))
    return fname, tuple(conditions)


def _banks(v: _Validator, raw: object) -> BankRules:
    path: _PathT = ("banks",)
    if raw is None:
        return BankRules()
    b = v.mapping(raw, path, optional=("cleared_match", "cleared_sample_rate",
                                       "clearance_scope"))
    default = BankRules()
    match = b.get("cleared_match", default.cleared_match)
    if match not in ("allow", "sample"):
        raise v.fail(path + ("cleared_match",), "must be allow or sample")
    scope = b.get("clearance_scope", default.clearance_scope)
    if scope not in ("account", "global"):
        raise v.fail(path + ("clearance_scope",), "must be account or global")
    rate = (v.number(b["cleared_sample_rate"], path + ("cleared_sample_rate",), 0.0, 1.0)
            if "cleared_sample_rate" in b else default.cleared_sample_rate)
    if match == "sample" and rate <= 0:
        raise v.fail(path + ("cleared_sample_rate",), "must be above 0 with cleared_match: sample")
    return BankRules(cleared_match=match, cleared_sample_rate=rate, clearance_scope=scope)


def _promotion(v: _Validator, raw: object) -> PromotionRules:
    path: _PathT = ("promotion",)
    if raw is None:
        return PromotionRules()
    p = v.mapping(raw, path, optional=("protected_segments", "fpr_tolerance"))
    default = PromotionRules()
    segments = default.protected_segments
    if "protected_segments" in p:
        sp = path + ("protected_segments",)
        if not isinstance(p["protected_segments"], list):
            raise v.fail(sp, "must be a list of segments, each {context_field: value}")
        found: list[tuple[str, Any]] = []
        for i, seg in enumerate(p["protected_segments"]):
            m = v.mapping(seg, sp + (i,), free_keys=True)
            if len(m) != 1:
                raise v.fail(sp + (i,), "must name exactly one context field and its value")
            ((fname, value),) = m.items()
            spec = CONTEXT_FIELDS.get(fname)
            if spec is None:
                raise v.fail(sp + (i, fname),
                             f"unknown context field (known: {', '.join(CONTEXT_FIELDS)})")
            if not spec.accepts(value):
                raise v.fail(sp + (i, fname), "is not a value this context field takes")
            if (fname, value) in found:
                raise v.fail(sp + (i,), "is listed twice")
            found.append((fname, value))
        segments = tuple(found)
    tolerance = (v.number(p["fpr_tolerance"], path + ("fpr_tolerance",), 0.0, 1.0)
                 if "fpr_tolerance" in p else default.fpr_tolerance)
    return PromotionRules(protected_segments=segments, fpr_tolerance=tolerance)


_NOT_FOR_VIOLATING = {
    ActionKind.HOLD_CONTENT.value: "is the automated outcome, not a reviewer's action",
    **{k.value: "restores; it cannot follow a violating verdict" for k in REVERSAL_KINDS},
}
_NOT_FOR_BENIGN = {
    k.value: "penalises; only restorative actions may follow this verdict"
    for k in ActionKind
    if k not in REVERSAL_KINDS
}


def _verdicts(
    v: _Validator, raw: object
) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
    path: _PathT = ("verdicts",)
    names = tuple(x.value for x in Verdict)
    vmap = v.mapping(raw, path, required=names)
    vp = path + (Verdict.VIOLATING.value,)
    violating = v.mapping(vmap[Verdict.VIOLATING], vp, required=("actions_by_severity",))
    sp = vp + ("actions_by_severity",)
    abs_raw = v.mapping(
        violating["actions_by_severity"], sp,
        required=("low", "medium", "high", "critical"), optional=("none",),
    )
    by_severity = {
        s: v.actions(abs_raw[s], sp + (s,), refuse=_NOT_FOR_VIOLATING)
        for s in SEVERITIES
        if s in abs_raw
    }
    others: dict[str, tuple[str, ...]] = {}
    for name in names:
        if name == Verdict.VIOLATING:
            continue
        op = path + (name,)
        body = v.mapping(vmap[name], op, required=("actions",))
        others[name] = v.actions(body["actions"], op + ("actions",), refuse=_NOT_FOR_BENIGN)
    return by_severity, others
