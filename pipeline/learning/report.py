"""The comparison as files: `compare.json` (everything), and `report.md` with its plots: ROC
overlays on the evaluation set, outcome changes on recent traffic by segment, and the
false-positive rate by segment for both models (matplotlib, drawn without pyplot)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.learning.compare import ROLES, Comparison, arrow


def write_report(comparison: Comparison, out_dir: Path) -> tuple[Path, Path]:
    """report.md and compare.json (and the plots) in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    d = comparison.as_dict()
    json_path = out_dir / "compare.json"
    json_path.write_text(json.dumps(d, indent=2, default=str) + "\n", encoding="utf-8")
    plots = _plots(comparison, out_dir)
    h = d["headline"]
    t = d["traffic"]
    sections: list[tuple[str, list[Any]]] = [
        ("Headline", [h["text"], f"policy `{d['policy']}`; traffic window "
                      f"{d['window']['since'] or 'start'} – {d['window']['until'] or 'now'}; "
                      f"scores: {json.dumps(t['sources'])}"]),
        ("Outcome transitions on recent traffic", [(
            ["active", "candidate", "decisions"],
            [[x["active"], x["candidate"], str(x["count"])] for x in t["transitions"]])]),
        ("Review volume per queue", [(
            ["queue", "active", "candidate", "moved in", "moved out"],
            [[q, str(v["active"]), str(v["candidate"]), str(v["moved_in"]),
              str(v["moved_out"])] for q, v in t["queues"].items()])]),
        ("Per context segment (recent traffic)", [(
            ["segment", "uploads", "changed", "now allowed", "now flagged", "flagged",
             "benign (people)", "benign flagged", "violating (people)", "violating allowed"],
            [[name, str(v["n"]), str(v["changed"]), str(v["now_allowed"]),
              str(v["now_flagged"]), arrow(v["flagged"]), str(v["benign"]),
              arrow(v["benign_flagged"]), str(v["violating"]), arrow(v["violating_allowed"])]
             for name, v in t["segments"].items()])]),
    ]
    ev = d["evaluation"]
    if ev is not None:
        sections.append((f"Evaluation set ({ev['split']} of {ev['data']}, {ev['n']} images)", [
            (["category", "ROC AUC", "average precision", "precision", "recall", "FPR"],
             [[c, *(arrow({r: m[r][k] for r in ROLES}, "{:.3f}")
                    for k in ("roc_auc", "average_precision", "precision", "recall", "fpr"))]
              for c, m in ev["per_category"].items()]),
            (["segment", "images", "benign", "benign flagged"],
             [[name, str(v["n"]), str(v["benign"]), arrow(v["benign_flagged"])]
              for name, v in ev["segments"].items()]),
        ]))
    p = d["protected"]
    sections.append(("Protected segments (the promotion rule)", [
        "passed" if p["passed"] else "**refused**: " + "; ".join(p["problems"]),
        (["segment", "benign", "benign flagged", "false-positive rate", "tolerance", "worse"],
         [[s["segment"], str(s["benign"]), arrow(s["benign_flagged"]),
           arrow(s["fpr"], "{:.1%}"), f"{s['tolerance']:.1%}", "yes" if s["worse"] else "no"]
          for s in p["segments"]]),
    ]))
    sections.append(("Plots", [f"![{x.stem}]({x.name})" for x in plots]))
    report = out_dir / "report.md"
    report.write_text(_markdown("Model comparison", sections), encoding="utf-8")
    return report, json_path


def _markdown(title: str, sections: Sequence[tuple[str, Sequence[Any]]]) -> str:
    """Headings, paragraphs and (header, rows) tables as Markdown."""
    lines = [f"# {title}", ""]
    for heading, items in sections:
        lines += [f"## {heading}", ""]
        for item in items:
            if isinstance(item, str):
                lines += [item, ""]
                continue
            head, body = item
            lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
            lines += ["| " + " | ".join(r) + " |" for r in body]
            lines.append("")
    return "\n".join(lines)


def _plots(comparison: Comparison, out_dir: Path) -> list[Path]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from models.classifier.evaluate import roc_curve

    paths: list[Path] = []

    def save(fig: Figure, name: str) -> None:
        FigureCanvasAgg(fig)
        path = out_dir / name
        fig.savefig(path, dpi=90, bbox_inches="tight")
        paths.append(path)

    ev = comparison.evaluation
    if ev is not None:
        first = ev.scored["active"]
        fig = Figure(figsize=(5, 4.5))
        ax = fig.add_subplot()
        for j, c in enumerate(first.categories):
            for role, style in (("active", ":"), ("candidate", "-")):
                ss = ev.scored[role]
                fpr, tpr, _ = roc_curve(ss.labels[:, j], ss.scores[:, j])
                auc = ev.results[role]["per_category"][c]["roc_auc"]
                ax.plot(fpr, tpr, linestyle=style,
                        label=f"{c} {role} (AUC {'–' if auc is None else f'{auc:.3f}'})")
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.5)
        ax.set(xlabel="false-positive rate", ylabel="true-positive rate",
               title="ROC on the evaluation set (dotted: active)")
        ax.legend(fontsize=6)
        save(fig, "roc_overlay.png")

    segs = comparison.traffic["segments"]
    if segs:
        names = list(segs)
        fig = Figure(figsize=(max(5, 1.1 * len(names)), 4))
        ax = fig.add_subplot()
        x = np.arange(len(names))
        ax.bar(x - 0.2, [segs[n]["now_allowed"] for n in names], width=0.4,
               label="flagged → allowed")
        ax.bar(x + 0.2, [segs[n]["now_flagged"] for n in names], width=0.4,
               label="allowed → flagged")
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=25, fontsize=7, ha="right")
        ax.set(ylabel="uploads", title="Outcome changes on recent traffic, by segment")
        ax.legend(fontsize=7)
        save(fig, "transitions.png")

        judged = [n for n in names if segs[n]["benign"]]
        if judged:
            fig = Figure(figsize=(max(5, 1.1 * len(judged)), 4))
            ax = fig.add_subplot()
            x = np.arange(len(judged))
            for i, role in enumerate(ROLES):
                ax.bar(x + (i - 0.5) * 0.4,
                       [segs[n]["benign_flagged"][role] / segs[n]["benign"] for n in judged],
                       width=0.4, label=role)
            ax.set_xticks(x)
            ax.set_xticklabels(judged, rotation=25, fontsize=7, ha="right")
            ax.set(ylabel="share of benign (people) flagged",
                   title="False-positive rate on recent traffic, by segment")
            ax.legend(fontsize=7)
            save(fig, "fpr_by_segment.png")
    return paths
