"""Evaluation: how good a scorer is per category and per context segment, at the thresholds
the policy actually applies.

Any `Scorer` can be evaluated (a torch checkpoint, an exported ONNX model, NudeNet).  A
category *flags* an image when its threshold in force is below 1.0 and the score reaches it,
exactly as the policy engine fires a review rule; the thresholds come from the caller (the CLI
asks the policy, with each image's context, so `medical_sharing` moves them as in production).
Segments are the values of each context field (`medical_sharing=true`): the false-positive
rate on medically shared images is the headline figure.  Writes JSON and a Markdown or HTML
report with PNG plots (matplotlib, drawn without pyplot).  numpy only, apart from the plots.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.base import Scorer
from models.classifier.calibrate import expected_calibration_error, reliability_bins
from models.classifier.data import ContextValue, Sample, decode_image, label_matrix
from models.classifier.progress import NoProgress, Progress
from models.errors import InvalidArgument

FloatArray = npt.NDArray[np.float64]
ThresholdSource = Mapping[str, float] | Callable[[Mapping[str, ContextValue]], Mapping[str, float]]
#: a context field with more distinct values than this is an identifier, not a segment
MAX_SEGMENT_VALUES = 12


# ---- curves and scalar metrics ------------------------------------------------------------
def _sorted_counts(y: npt.ArrayLike, s: npt.ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Cumulative TP and FP at each distinct score, highest first (ties grouped)."""
    yt: FloatArray = np.asarray(y, dtype=np.float64).reshape(-1)
    st: FloatArray = np.asarray(s, dtype=np.float64).reshape(-1)
    order = np.argsort(-st, kind="mergesort")
    st, yt = st[order], yt[order]
    distinct = np.r_[np.nonzero(np.diff(st))[0], st.size - 1]
    tps = np.cumsum(yt)[distinct]
    fps = (1 + distinct) - tps
    return tps, fps, st[distinct]


def roc_curve(y: npt.ArrayLike, s: npt.ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(fpr, tpr, thresholds), starting at (0, 0); empty-class curves are NaN."""
    tps, fps, thr = _sorted_counts(y, s)
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    thr = np.r_[np.inf, thr]
    p, n = tps[-1], fps[-1]
    fpr = fps / n if n > 0 else np.full_like(fps, np.nan)
    tpr = tps / p if p > 0 else np.full_like(tps, np.nan)
    return fpr, tpr, thr


def roc_auc(y: npt.ArrayLike, s: npt.ArrayLike) -> float:
    """Area under the ROC curve (ties count half); NaN when a class is absent."""
    yt = np.asarray(y).ravel()
    if yt.size == 0 or yt.min() == yt.max():
        return float("nan")
    fpr, tpr, _ = roc_curve(y, s)
    return float(np.trapezoid(tpr, fpr))


def pr_curve(y: npt.ArrayLike, s: npt.ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(precision, recall, thresholds) from the highest threshold down."""
    tps, fps, thr = _sorted_counts(y, s)
    p = tps[-1] if tps.size else 0.0
    precision = tps / np.maximum(tps + fps, 1)
    recall = tps / p if p > 0 else np.full_like(tps, np.nan)
    return precision, recall, thr


def average_precision(y: npt.ArrayLike, s: npt.ArrayLike) -> float:
    """Step-wise area under the PR curve (sum of precision x recall increments)."""
    precision, recall, _ = pr_curve(y, s)
    if recall.size == 0 or np.isnan(recall).any():
        return float("nan")
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fires(scores: npt.ArrayLike, thresholds: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """The policy's rule: a threshold of 1.0 never fires; otherwise score >= threshold."""
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(thresholds, dtype=np.float64)
    return np.asarray((t < 1.0) & (s >= t))


@dataclass(frozen=True, slots=True)
class AtThreshold:
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else (float("nan") if math.isnan(p + r) else 0.0)

    @property
    def fpr(self) -> float:
        return self.fp / (self.fp + self.tn) if self.fp + self.tn else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn,
                "precision": _num(self.precision), "recall": _num(self.recall),
                "f1": _num(self.f1), "fpr": _num(self.fpr)}


def at_threshold(y: npt.ArrayLike, flagged: npt.ArrayLike) -> AtThreshold:
    yt = np.asarray(y).astype(bool).ravel()
    ft = np.asarray(flagged).astype(bool).ravel()
    return AtThreshold(
        tp=int(np.sum(yt & ft)), fp=int(np.sum(~yt & ft)),
        fn=int(np.sum(yt & ~ft)), tn=int(np.sum(~yt & ~ft)),
    )


def _num(x: float) -> float | None:
    """JSON has no NaN: undefined metrics are null."""
    return None if x is None or math.isnan(x) else round(float(x), 6)


# ---- scoring a dataset --------------------------------------------------------------------
@dataclass
class ScoredSet:
    """Scores, labels and the thresholds in force for each image of one split."""

    categories: tuple[str, ...]
    scores: FloatArray
    labels: FloatArray
    thresholds: FloatArray
    contexts: list[Mapping[str, ContextValue]]
    model_version: str
    split: str


def score_samples(
    scorer: Scorer,
    samples: Sequence[Sample],
    *,
    categories: Sequence[str] | None = None,
    thresholds: ThresholdSource,
    batch_size: int = 32,
    split: str = "test",
    progress: Progress | None = None,
) -> ScoredSet:
    """Decode and score every sample with `scorer`; look up each one's thresholds in force."""
    progress = progress or NoProgress()
    cats = tuple(categories or scorer.categories)
    missing = [c for c in cats if c not in scorer.categories]
    if missing:
        raise ValueError(f"scorer {scorer.version} does not report {missing}")
    scores = np.zeros((len(samples), len(cats)), dtype=np.float64)
    progress.start("score", f"scoring {len(samples)} {split} images", len(samples))
    for lo in range(0, len(samples), batch_size):
        chunk = samples[lo : lo + batch_size]
        results = scorer.score([decode_image(s.path) for s in chunk])
        for i, r in enumerate(results):
            scores[lo + i] = [r.scores[c] for c in cats]
        progress.advance("score", len(chunk))
    thr = np.zeros_like(scores)
    cache: dict[str, Mapping[str, float]] = {}
    for i, s in enumerate(samples):
        if callable(thresholds):
            key = json.dumps(dict(s.context), sort_keys=True)
            if key not in cache:
                cache[key] = thresholds(s.context)
            row = cache[key]
        else:
            row = thresholds
        thr[i] = [float(row.get(c, 1.0)) for c in cats]
    return ScoredSet(
        categories=cats,
        scores=scores,
        labels=label_matrix(samples, cats).astype(np.float64),
        thresholds=thr,
        contexts=[dict(s.context) for s in samples],
        model_version=scorer.version,
        split=split,
    )


# ---- evaluation ---------------------------------------------------------------------------
def segments(
    contexts: Sequence[Mapping[str, ContextValue]],
) -> list[tuple[str, npt.NDArray[np.bool_]]]:
    """("all", mask) then ("field=value", mask) for every low-cardinality context field."""
    n = len(contexts)
    out: list[tuple[str, npt.NDArray[np.bool_]]] = [("all", np.ones(n, dtype=bool))]
    fields = sorted({k for c in contexts for k in c})
    for f in fields:
        values = [c.get(f) for c in contexts]
        distinct = sorted({_fmt_value(v) for v in values})
        if len(distinct) > MAX_SEGMENT_VALUES:
            continue
        for v in distinct:
            mask = np.array([_fmt_value(x) == v for x in values], dtype=bool)
            out.append((f"{f}={v}", mask))
    return out


def _fmt_value(v: ContextValue) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "null" if v is None else str(v)


def _category_metrics(y: FloatArray, s: FloatArray, t: FloatArray) -> dict[str, Any]:
    counts = at_threshold(y, fires(s, t))
    distinct_t = sorted({round(float(x), 6) for x in t})
    return {
        "n": int(y.size),
        "positives": int(y.sum()),
        "thresholds_in_force": distinct_t,
        "flags": bool(any(x < 1.0 for x in distinct_t)),
        **counts.as_dict(),
        "roc_auc": _num(roc_auc(y, s)),
        "average_precision": _num(average_precision(y, s)),
        "ece": _num(expected_calibration_error(s, y)) if y.size else None,
    }


def evaluate(scored: ScoredSet) -> dict[str, Any]:
    """Every figure, as plain JSON-ready data."""
    y, s, t = scored.labels, scored.scores, scored.thresholds
    per_category = {
        c: _category_metrics(y[:, j], s[:, j], t[:, j]) for j, c in enumerate(scored.categories)
    }
    for j, c in enumerate(scored.categories):
        fpr, tpr, _ = roc_curve(y[:, j], s[:, j])
        prec, rec, _ = pr_curve(y[:, j], s[:, j])
        per_category[c]["curves"] = {
            "roc": {"fpr": _thin(fpr), "tpr": _thin(tpr)},
            "pr": {"precision": _thin(prec), "recall": _thin(rec)},
            "reliability": reliability_bins(s[:, j], y[:, j]),
        }
    flagged_any = np.asarray(fires(s, t).any(axis=1), dtype=bool)
    benign = y.sum(axis=1) == 0
    seg_rows: list[dict[str, Any]] = []
    for name, mask in segments(scored.contexts):
        if not mask.any():
            continue
        img = at_threshold(~benign[mask], flagged_any[mask])
        seg_rows.append({
            "segment": name,
            "n": int(mask.sum()),
            "benign": int(benign[mask].sum()),
            "benign_flagged": img.fp,
            # The headline: the share of benign images that a person would be asked to review.
            "image_fpr": _num(img.fpr),
            "image_recall": _num(img.recall),
            "per_category": {
                c: _category_metrics(y[mask, j], s[mask, j], t[mask, j])
                for j, c in enumerate(scored.categories)
            },
        })
    headline = [
        {"segment": r["segment"], "image_fpr": r["image_fpr"], "benign": r["benign"],
         "benign_flagged": r["benign_flagged"]}
        for r in seg_rows
        if r["segment"] == "all" or r["segment"].startswith("medical_sharing=")
    ]
    return {
        "model_version": scored.model_version,
        "split": scored.split,
        "n": int(y.shape[0]),
        "categories": list(scored.categories),
        "headline": headline,
        "per_category": per_category,
        "segments": seg_rows,
        "macro": {
            "roc_auc": _num(_nanmean([per_category[c]["roc_auc"] for c in scored.categories])),
            "ece": _num(_nanmean([per_category[c]["ece"] for c in scored.categories])),
        },
    }


def _nanmean(xs: Iterable[float | None]) -> float:
    vals = [x for x in xs if x is not None and not math.isnan(x)]
    return float(np.mean(vals)) if vals else float("nan")


def _thin(a: FloatArray, n: int = 200) -> list[float | None]:
    """At most n points of a curve (JSON stays small; plots use the full arrays)."""
    if a.size > n:
        a = a[np.linspace(0, a.size - 1, n).round().astype(int)]
    return [_num(float(x)) for x in a]


# ---- the report ---------------------------------------------------------------------------
REPORT_FORMATS = ("md", "html")


@dataclass
class Report:
    json_path: Path
    report_path: Path
    plots: list[Path] = field(default_factory=list)


def write_report(
    result: Mapping[str, Any],
    scored: ScoredSet,
    out_dir: Path,
    *,
    fmt: str = "md",
    title: str = "Classifier evaluation",
    notes: Mapping[str, Any] | None = None,
) -> Report:
    if fmt not in REPORT_FORMATS:
        raise InvalidArgument("fmt must be md or html")
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = _plots(result, scored, out_dir)
    doc = {**result, "notes": dict(notes or {})}
    json_path = out_dir / "evaluation.json"
    json_path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    sections = _sections(result, notes or {}, plots)
    if fmt == "md":
        path = out_dir / "report.md"
        path.write_text(_markdown(title, sections), encoding="utf-8")
    else:
        path = out_dir / "report.html"
        path.write_text(_html(title, sections), encoding="utf-8")
    return Report(json_path, path, plots)


def read_summary(path: Path) -> dict[str, Any]:
    """An evaluation.json that `write_report` wrote, without its curves: what a card records."""
    try:
        ev = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"{path} is not JSON: {exc}") from None
    if not isinstance(ev, dict):
        raise InvalidArgument(f"{path} is not an evaluation (a JSON object)")
    return {
        "model_version": ev.get("model_version"), "split": ev.get("split"),
        "n": ev.get("n"), "macro": ev.get("macro"), "headline": ev.get("headline"),
        "per_category": {c: {k: v for k, v in m.items() if k != "curves"}
                         for c, m in ev.get("per_category", {}).items()},
    }


Table = tuple[list[str], list[list[str]]]
Section = tuple[str, list[str | Table]]


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _thr(values: Sequence[float]) -> str:
    return ", ".join("never" if v >= 1.0 else f"{v:g}" for v in values)


def _sections(
    result: Mapping[str, Any], notes: Mapping[str, Any], plots: list[Path]
) -> list[Section]:
    cats = result["categories"]
    out: list[Section] = []
    intro: list[str | Table] = [
        f"Model `{result['model_version']}`, split `{result['split']}`, {result['n']} images.",
        "A category flags an image when its score reaches the review threshold in force for "
        "that image's context (thresholds of 1.0 never fire), as the policy engine does.",
    ]
    intro += [f"{k}: `{v}`" for k, v in notes.items()]
    out.append(("Summary", intro))
    out.append(("Headline: benign images flagged for review, by segment", [(
        ["segment", "benign images", "flagged", "false-positive rate"],
        [[r["segment"], str(r["benign"]), str(r["benign_flagged"]), _f(r["image_fpr"])]
         for r in result["headline"]],
    )]))
    out.append(("Per category (all images)", [(
        ["category", "thresholds", "positives", "precision", "recall", "F1", "FPR",
         "ROC AUC", "AP", "ECE"],
        [[c, _thr(m["thresholds_in_force"]), f"{m['positives']}/{m['n']}", _f(m["precision"]),
          _f(m["recall"]), _f(m["f1"]), _f(m["fpr"]), _f(m["roc_auc"]),
          _f(m["average_precision"]), _f(m["ece"])]
         for c, m in ((c, result["per_category"][c]) for c in cats)],
    )]))
    rows = []
    for seg in result["segments"]:
        for c in cats:
            m = seg["per_category"][c]
            rows.append([seg["segment"], c, _thr(m["thresholds_in_force"]),
                         f"{m['positives']}/{m['n']}", _f(m["precision"]), _f(m["recall"]),
                         _f(m["f1"]), _f(m["fpr"]), _f(m["roc_auc"]), _f(m["ece"])])
    out.append(("Per segment", [(
        ["segment", "category", "thresholds", "positives", "precision", "recall", "F1", "FPR",
         "ROC AUC", "ECE"], rows)]))
    out.append(("Plots", [f"![{p.stem}]({p.name})" for p in plots]))
    return out


def _markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for heading, items in sections:
        lines += [f"## {heading}", ""]
        for item in items:
            if isinstance(item, str):
                lines += [item, ""]
            else:
                head, body = item
                lines.append("| " + " | ".join(head) + " |")
                lines.append("|" + "|".join("---" for _ in head) + "|")
                lines += ["| " + " | ".join(r) + " |" for r in body]
                lines.append("")
    return "\n".join(lines)


def _html(title: str, sections: list[Section]) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:70em;margin:auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
             "img{max-width:32em}</style></head><body>", f"<h1>{e(title)}</h1>"]
    for heading, items in sections:
        parts.append(f"<h2>{e(heading)}</h2>")
        for item in items:
            if isinstance(item, str):
                if item.startswith("![") and "](" in item:
                    src = item[item.index("](") + 2 : -1]
                    parts.append(f"<img src='{e(src)}' alt='{e(src)}'>")
                else:
                    parts.append(f"<p>{e(item).replace('`', '')}</p>")
            else:
                head, body = item
                parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>")
                parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in body]
                parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _plots(result: Mapping[str, Any], scored: ScoredSet, out_dir: Path) -> list[Path]:
    # The object-oriented API, not pyplot: no global state, no GUI backend, thread-safe.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cats = list(scored.categories)
    y, s = scored.labels, scored.scores
    paths: list[Path] = []

    def save(fig: Figure, name: str) -> None:
        FigureCanvasAgg(fig)
        path = out_dir / name
        fig.savefig(path, dpi=90, bbox_inches="tight")
        paths.append(path)

    fig = Figure(figsize=(5, 4.5))
    ax = fig.add_subplot()
    for j, c in enumerate(cats):
        fpr, tpr, _ = roc_curve(y[:, j], s[:, j])
        ax.plot(fpr, tpr, label=f"{c} (AUC {_f(result['per_category'][c]['roc_auc'])})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title="ROC")
    ax.legend(fontsize=7)
    save(fig, "roc.png")

    fig = Figure(figsize=(5, 4.5))
    ax = fig.add_subplot()
    for j, c in enumerate(cats):
        prec, rec, _ = pr_curve(y[:, j], s[:, j])
        ax.plot(rec, prec, label=f"{c} (AP {_f(result['per_category'][c]['average_precision'])})")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", ylim=(0, 1.02))
    ax.legend(fontsize=7)
    save(fig, "pr.png")

    fig = Figure(figsize=(5, 4.5))
    ax = fig.add_subplot()
    for j, c in enumerate(cats):
        bins = reliability_bins(s[:, j], y[:, j])
        ax.plot([b["mean_score"] for b in bins], [b["observed"] for b in bins], marker="o",
                label=f"{c} (ECE {_f(result['per_category'][c]['ece'])})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set(xlabel="mean score", ylabel="observed frequency", title="Reliability")
    ax.legend(fontsize=7)
    save(fig, "reliability.png")

    segs = [r for r in result["segments"]]
    fig = Figure(figsize=(max(5, 1.2 * len(segs)), 4))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(cats))
    for j, c in enumerate(cats):
        vals = [r["per_category"][c]["fpr"] or 0.0 for r in segs]
        ax.bar([i + j * width for i in range(len(segs))], vals, width=width, label=c)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(segs))])
    ax.set_xticklabels([r["segment"] for r in segs], rotation=20, fontsize=7)
    ax.set(ylabel="false-positive rate at the thresholds in force", title="FPR by segment")
    ax.legend(fontsize=7)
    save(fig, "fpr_by_segment.png")
    return paths
