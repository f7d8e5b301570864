"""The labelling config generated from the policy (one per queue), its digest, and reading a
submitted annotation's form back."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import quoteattr

from pipeline.policy import Policy
from review import Verdict

#: the proposed-action choice that means "the actions the policy maps this verdict to"
AS_POLICY = "as_policy"

VERDICT_HINTS = {
    Verdict.VIOLATING: "Breaks the policy: name the violated categories",
    Verdict.BENIGN: "No violation",
    Verdict.BENIGN_MEDICAL: "No violation: medical context",
    Verdict.NEED_MORE_CONTEXT: "Cannot decide without the user's context (they will be asked)",
}


def label_config(policy: Policy, queue: str) -> str:
    """The labelling interface for one queue: verdict, violated categories, proposed action,
    notes; the preview, the reasons, the context and the account's history to read."""
    cats = "\n".join(
        f"    <Choice value={quoteattr(c.name)} hint={quoteattr(c.description.strip()[:200])}/>"
        for c in policy.categories.values()
        if c.severity != "none"
    )
    actions = sorted({a for acts in policy.actions_by_severity.values() for a in acts})
    acts = "\n".join(f"    <Choice value={quoteattr(a)}/>" for a in actions)
    verdicts = "\n".join(
        f"    <Choice value={quoteattr(str(v))} hint={quoteattr(VERDICT_HINTS[v])}/>"
        for v in Verdict
    )
    title = quoteattr(f"lookfirst · queue {queue} · policy {policy.name} {policy.version}")
    return f"""<View>
  <Header value={title} size="5"/>
  <View style="display:flex;gap:16px;align-items:flex-start">
    <View style="flex:1 1 55%">
      <Image name="preview" value="$preview" zoom="false"/>
      <HyperText name="reveal" value="$reveal_html" inline="true"/>
    </View>
    <View style="flex:1 1 45%">
      <Header value="Why this is here (statement of reasons)" size="6"/>
      <Text name="reasons" value="$reasons_text"/>
      <Header value="Context" size="6"/>
      <Text name="context" value="$context_text"/>
      <Header value="Account history" size="6"/>
      <Text name="history" value="$history_text"/>
    </View>
  </View>
  <Header value="Verdict" size="6"/>
  <Choices name="verdict" toName="preview" choice="single-radio" required="true" showInline="true">
{verdicts}
  </Choices>
  <Header value="Violated categories (for a violating verdict)" size="6"/>
  <Choices name="categories" toName="preview" choice="multiple" showInline="true">
{cats}
  </Choices>
  <Header value="Proposed action (lookfirst applies the policy's mapping)" size="6"/>
  <Choices name="proposed_action" toName="preview" choice="single-radio" showInline="true">
    <Choice value="{AS_POLICY}" hint="The actions the policy maps this verdict to"/>
{acts}
  </Choices>
  <Header value="Notes" size="6"/>
  <TextArea name="notes" toName="preview" rows="3" maxSubmissions="1" editable="true"/>
</View>
"""


def config_digest(config: str) -> str:
    return hashlib.sha256(config.encode()).hexdigest()


# ---- reading an annotation --------------------------------------------------------------------
@dataclass(frozen=True)
class AnnotationForm:
    verdict: str | None
    categories: tuple[str, ...]
    proposed_action: str | None
    notes: str


def parse_result(result: Sequence[Mapping[str, Any]] | None) -> AnnotationForm:
    verdict: str | None = None
    categories: tuple[str, ...] = ()
    proposed: str | None = None
    notes = ""
    for r in result or ():
        name, value = r.get("from_name"), r.get("value") or {}
        if name == "verdict" and value.get("choices"):
            verdict = str(value["choices"][0])
        elif name == "categories":
            categories = tuple(str(c) for c in value.get("choices") or ())
        elif name == "proposed_action" and value.get("choices"):
            proposed = str(value["choices"][0])
        elif name == "notes":
            notes = "\n".join(str(t) for t in value.get("text") or ())
    return AnnotationForm(verdict, categories, proposed, notes[:4000])

