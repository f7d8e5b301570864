"""The Label Studio sync: reviewers work in Label Studio, lookfirst stays the system of record.

- `setup()`: one project per review queue, its labelling config generated from the policy's
  taxonomy and validated through Label Studio's API; idempotent.  Two-person queues get
  `maximum_annotations=2`; every project gets a webhook carrying the shared secret header.
- Tasks go out through the outbox (`enqueue_tasks` writes messages; the `TaskSink` delivers
  them), never in a request path.
- Annotations come back by webhook (`reconcile`, after the receiver has answered) and by the
  poller (`poll`), which catches whatever the webhook missed.  Each annotation is judged once
  (table labelstudio_annotation): recorded as the mapped reviewer's verdict (claim and decide
  in one audited transaction) or refused, flagged and audited (unknown or not entitled user,
  incomplete form, closed item).

Nothing here logs a payload: Label Studio's carry the project token and the reviewer's notes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipeline.errors import PipelineError
from pipeline.labelstudio.client import (
    LabelStudioClient,
    LabelStudioNotSetUp,
    LabelStudioUnavailable,
    iso_utc,
)
from pipeline.labelstudio.config import AS_POLICY, config_digest, label_config, parse_result
from pipeline.labelstudio.sink import task_worker
from pipeline.previews import sign_link
from pipeline.runtime import Runtime
from review import (
    ItemStatus,
    LabelStudioJudgedAnnotation,
    OutboxWorker,
    ReviewError,
    account_history,
    append_audit_event,
    bank_cluster_sizes,
    enqueue_labelstudio_closures,
    enqueue_labelstudio_tasks,
    get_decision,
    item_state,
    labelstudio_judged_annotation,
    labelstudio_projects,
    labelstudio_reviewer_for_email,
    labelstudio_reviewer_for_user,
    labelstudio_sync_state,
    labelstudio_sync_status,
    labelstudio_task_item,
    map_labelstudio_reviewer,
    record_labelstudio_annotation,
    record_labelstudio_annotation_edit,
    save_labelstudio_project,
    save_labelstudio_sync_state,
)

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Lookfirst-Webhook-Secret"
WEBHOOK_PATH = "/v1/labelstudio/webhook"
ACTOR = "system:labelstudio-sync"


def result_digest(result: Any) -> str:
    """sha256 of an annotation's result, key order aside: what an edit changes."""
    return hashlib.sha256(json.dumps(result, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class PollReport:
    tasks_seen: int = 0
    recorded: int = 0
    refused: int = 0
    deferred: int = 0
    already: int = 0
    error: str | None = None


@dataclass
class SetupReport:
    projects: dict[str, int] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    webhooks_created: int = 0


class LabelStudioSync:
    def __init__(self, rt: Runtime, *, client: LabelStudioClient | None = None,
                 title_prefix: str = "lookfirst",
                 poll_overlap: dt.timedelta = dt.timedelta(seconds=2)) -> None:
        self.rt = rt
        #: projects are found again by title, so two lookfirst installations (or test runs)
        #: sharing one Label Studio keep apart
        self.title_prefix = title_prefix
        cfg = rt.settings
        if client is None:
            if not cfg.labelstudio_token:
                raise LabelStudioNotSetUp("set LOOKFIRST_LABELSTUDIO_TOKEN to Label Studio's "
                                          "API token")
            client = LabelStudioClient(cfg.labelstudio_url, cfg.labelstudio_token,
                                       timeout_s=cfg.labelstudio_timeout_s)
        self.client = client
        #: how far before its cursor each poll reads again (a task Label Studio updated just
        #: before the cursor but committed after the last read is not missed)
        self.poll_overlap = poll_overlap
        # the webhook's background task and the poller may run in one process: one judge
        # at a time, so an annotation is never judged twice concurrently
        self._judge = threading.Lock()

    @property
    def webhook_url(self) -> str:
        cfg = self.rt.settings
        return cfg.labelstudio_webhook_url or (
            cfg.labelstudio_public_api_url.rstrip("/") + WEBHOOK_PATH
        )

    def _now(self) -> dt.datetime:
        return self.rt.review.clock()

    def _audit(self, s: Session, *, actor: str, event: str, subject_id: int,
               data: Mapping[str, Any]) -> None:
        append_audit_event(s, at=self._now(), actor=actor, event=event,
                           subject_type="review_item", subject_id=subject_id, data=dict(data))

    # ---- setup ------------------------------------------------------------------------------
    def setup(self) -> SetupReport:
        rep = SetupReport()
        policy = self.rt.policy
        existing = {p.title: int(p.id) for p in self.client.projects()}
        with self.rt.db.transaction() as s:
            known = labelstudio_projects(s)
        for queue, spec in policy.queues.items():
            config = label_config(policy, queue)
            digest = config_digest(config)
            maximum = max(1, spec.reviewers_required)
            title = f"{self.title_prefix} · {queue}"
            row = known.get(queue)
            pid = row.project_id if row is not None else existing.get(title)
            if pid is not None and row is not None and pid not in existing.values():
                pid = existing.get(title)  # the project was deleted in Label Studio
            if pid is None:
                pid = self.client.create_project(
                    title=title, description=spec.description.strip()[:1000],
                    label_config=config, maximum_annotations=maximum,
                    show_skip_button=True, show_collab_predictions=False,
                    enable_empty_annotation=False, show_annotation_history=False,
                    sampling="Sequential sampling",
                )
                rep.created.append(queue)
                self.client.validate_config(pid, config)
            elif row is None or row.config_sha256 != digest or row.maximum_annotations != maximum:
                self.client.validate_config(pid, config)  # refused here before anything changes
                self.client.update_project(pid, label_config=config,
                                           maximum_annotations=maximum)
                rep.updated.append(queue)
            rep.projects[queue] = pid
            hooks = self.client.webhooks(pid)
            if not any(getattr(h, "url", None) == self.webhook_url for h in hooks):
                self.client.create_webhook(
                    pid=pid, url=self.webhook_url,
                    headers={SECRET_HEADER: self.rt.settings.labelstudio_webhook_secret},
                )
                rep.webhooks_created += 1
            with self.rt.db.transaction() as s:
                save_labelstudio_project(s, queue=queue, project_id=pid, config_sha256=digest,
                                         maximum_annotations=maximum, now=self._now())
        return rep

    def map_reviewer(self, s: Session, *, email: str, reviewer_id: str,
                     ls_user_id: int | None = None) -> None:
        """A Label Studio user acts as this lookfirst reviewer (entitlements stay lookfirst's)."""
        email = email.lower()
        self.rt.review.entitled_queues(s, reviewer_id)  # refuses an unknown reviewer
        map_labelstudio_reviewer(s, email=email, reviewer_id=reviewer_id, ls_user_id=ls_user_id,
                                 now=self._now())
        append_audit_event(s, at=self._now(), actor=ACTOR, event="labelstudio.reviewer_mapped",
                           subject_type="reviewer", subject_id=reviewer_id,
                           data={"email": email})

    # ---- tasks out -------------------------------------------------------------------------
    def enqueue_tasks(self, s: Session, *, limit: int = 1000) -> int:
        """One outbox row per open review item that has no task yet (in the caller's
        transaction; the row's unique idempotency key makes a second call a no-op)."""
        return enqueue_labelstudio_tasks(s, now=self._now(), limit=limit)

    def task_data(self, s: Session, item_id: int) -> dict[str, Any]:
        """What a reviewer sees: a blurred preview link, the reasons, the context, the
        account's history, the audited link to the original; the scores as a prediction."""
        cfg = self.rt.settings
        view = self.rt.review.show(s, item_id, viewer=None)
        now = self._now()
        key = cfg.signing_key
        base = cfg.labelstudio_public_api_url.rstrip("/")
        preview = sign_link(key, kind="preview", item_id=item_id, sha256=view.content_sha256,
                            expires_at=now + dt.timedelta(seconds=cfg.labelstudio_preview_ttl_s))
        original = sign_link(key, kind="original", item_id=item_id, sha256=view.content_sha256,
                             expires_at=now + dt.timedelta(
                                 seconds=cfg.labelstudio_original_ttl_s))
        reasons = dict(view.reasons)
        decision = get_decision(s, decision_id=view.decision_id)
        assert decision is not None
        fired = [r for r in reasons.get("rules", []) if r.get("fired")]
        lines = [f"Outcome: {view.outcome} · severity {view.severity} · queue {view.queue} · "
                 f"{view.reviewers_required} reviewer(s) needed",
                 f"Model {decision.model_version} · policy {decision.policy_version}"]
        lines += [f"Rule {r['rule']}: score {r['score']} ≥ threshold {r['threshold']}"
                  + (" (moved by " + ", ".join(m["modifier"] for m in r.get("moved_by", []))
                     + ")" if r.get("moved_by") else "")
                  for r in fired]
        lines += [str(x) for x in reasons.get("routing", [])]
        if view.proposed_actions:
            lines.append("Policy proposes (needs your verdict): "
                         + ", ".join(view.proposed_actions))
        if view.appeal_statement:
            lines.append(f"The user says: {view.appeal_statement}")
        cluster = bank_cluster_sizes(s, [item_id], threshold=cfg.bank_pdq_threshold,
                                     quality_floor=cfg.bank_pdq_quality_floor).get(item_id, 1)
        if cluster > 1:
            lines.append(f"Near-duplicates open in this queue: {cluster} items (PDQ); "
                         f"`lookfirst review decide-bulk {item_id} --by pdq` decides them at once")
        context = dict(view.context)
        ctx_text = ", ".join(f"{k}: {v}" for k, v in sorted(context.items())) or "none given"
        scores = {k: float(v) for k, v in dict(view.scores).items()
                  if isinstance(v, int | float)}
        top = max(scores.values(), default=0.0)
        return {
            "data": {
                "item_id": item_id,
                "queue": view.queue,
                "decision_id": view.decision_id,
                "preview": f"{base}/v1/previews/{preview}",
                "reveal_html": (
                    f'<a href="{html.escape(base)}/v1/originals/{original}" target="_blank" '
                    'rel="noopener noreferrer">Reveal the original (audited)</a>'
                ),
                "reasons_text": "\n".join(lines),
                "context_text": ctx_text,
                "history_text": self._history(s, view.account_id, view.decision_id),
                "cluster_size": cluster,
            },
            "predictions": [{
                "model_version": decision.model_version,
                "score": round(top, 4),
                "result": [{
                    "from_name": "categories", "to_name": "preview", "type": "choices",
                    "value": {"choices": [r["category"] for r in fired
                                          if r["category"] in self.rt.policy.categories]},
                }] if fired else [],
            }],
        }

    def _history(self, s: Session, account_id: str, decision_id: str) -> str:
        h = account_history(s, account_id=account_id, excluding_decision=decision_id)
        if not h.outcomes and not h.verdicts:
            return "No earlier uploads from this account."
        parts = ["earlier decisions: "
                 + ", ".join(f"{o} {n}" for o, n in sorted(h.outcomes.items()))]
        if h.verdicts:
            parts.append("earlier verdicts: "
                         + ", ".join(f"{v} {n}" for v, n in sorted(h.verdicts.items())))
        return "; ".join(parts)

    # ---- annotations back ------------------------------------------------------------------
    def reconcile(self, task_id: int, annotation: Mapping[str, Any], *, via: str) -> str:
        """Judge one annotation once: 'recorded', 'refused', 'deferred' (the item is leased
        to someone else in lookfirst right now: try again later), 'already' or 'ignored'."""
        with self._judge:
            return self._reconcile(task_id, annotation, via=via)

    def _reconcile(self, task_id: int, ann: Mapping[str, Any], *, via: str) -> str:
        ann_id = int(ann["id"])
        if ann.get("was_cancelled"):
            return "ignored"  # a skip is not a verdict
        user = ann.get("completed_by")
        ls_user = int(user["id"] if isinstance(user, Mapping) else user) if user else None
        db, svc = self.rt.db, self.rt.review
        digest = result_digest(ann.get("result"))
        with db.transaction() as s:
            judged = labelstudio_judged_annotation(s, annotation_id=ann_id)
            if judged is not None:
                if judged.result_sha256 in (None, digest):
                    return "already"
                reviewer = self._reviewer_for(s, ls_user)
        if judged is not None:  # edited in Label Studio after it was judged
            return self._judge_edit(judged, ann, reviewer, digest, via=via)
        with db.transaction() as s:
            found = labelstudio_task_item(s, task_id=task_id)
            if found is None:
                return "ignored"  # not one of ours
            item_id = found
            reviewer = self._reviewer_for(s, ls_user)
        form = parse_result(ann.get("result"))
        refusal: tuple[str, str] | None = None
        if reviewer is None:
            refusal = ("labelstudio.unknown_user",
                       "the Label Studio user is not mapped to a lookfirst reviewer")
        elif form.verdict is None:
            refusal = ("labelstudio.form_invalid", "no verdict chosen")
        if refusal is None:
            assert reviewer is not None and form.verdict is not None
            try:
                with db.transaction() as s:
                    item = item_state(s, item_id=item_id)
                    assert item is not None
                    if (item.status == ItemStatus.CLAIMED and item.claimed_by != reviewer
                            and item.lease_expires_at is not None
                            and item.lease_expires_at > self._now()):
                        return "deferred"
                    if item.status == ItemStatus.CLAIMED and item.claimed_by == reviewer:
                        pass  # already leased to this reviewer (claimed in lookfirst)
                    else:
                        # naming the queue makes the claim refuse a reviewer who is not
                        # entitled to it (NotEntitled), the open-source edition having no roles
                        svc.claim(s, reviewer_id=reviewer, queue=item.queue, item_id=item_id)
                    note = form.notes
                    if form.proposed_action and form.proposed_action != AS_POLICY:
                        note = (f"{note}\n[reviewer proposed: {form.proposed_action}]").strip()
                    # Label Studio authenticated the user; the verdict's door is their account
                    res = svc.decide(s, item_id=item_id, reviewer_id=reviewer,
                                     verdict=form.verdict, categories=form.categories, note=note,
                                     credential=f"labelstudio:{ls_user}")
                    record_labelstudio_annotation(
                        s, annotation_id=ann_id, task_id=task_id, item_id=item_id,
                        ls_user_id=ls_user, reviewer_id=reviewer, status="recorded", code=None,
                        verdict_id=res.verdict_id, via=via, now=self._now(),
                        result_sha256=digest)
                    self._audit(s, actor=reviewer, event="labelstudio.annotation_recorded",
                                subject_id=item_id,
                                data={"annotation_id": ann_id, "task_id": task_id, "via": via,
                                      "verdict_id": res.verdict_id,
                                      "reviewer_proposed": form.proposed_action})
                log.info("annotation recorded as a verdict",
                         extra={"item_id": item_id, "annotation_id": ann_id, "via": via})
                return "recorded"
            except IntegrityError:
                return "already"  # judged concurrently by another process
            except ReviewError as exc:
                refusal = (exc.code, exc.detail)
        code, detail = refusal
        try:
            with db.transaction() as s:
                if labelstudio_judged_annotation(s, annotation_id=ann_id) is not None:
                    return "already"
                record_labelstudio_annotation(
                    s, annotation_id=ann_id, task_id=task_id, item_id=item_id, ls_user_id=ls_user,
                    reviewer_id=reviewer, status="refused", code=code[:64], verdict_id=None,
                    via=via, now=self._now(), result_sha256=digest)
                self._audit(s, actor=reviewer or f"labelstudio-user:{ls_user}",
                            event="labelstudio.annotation_refused", subject_id=item_id,
                            data={"annotation_id": ann_id, "task_id": task_id, "via": via,
                                  "code": code, "detail": detail[:300]})
        except IntegrityError:
            return "already"
        log.warning("annotation refused as a verdict (flagged)",
                    extra={"item_id": item_id, "annotation_id": ann_id, "code": code})
        return "refused"

    def _judge_edit(self, judged: LabelStudioJudgedAnnotation, ann: Mapping[str, Any],
                    reviewer: str | None, digest: str, *, via: str) -> str:
        """An annotation edited after it was judged is a new verdict attempt, through the same
        rules as any verdict: the reviewer claims and decides the item again.  Those rules
        refuse what a verdict once given cannot become (the reviewer decided it already; the
        item is closed): then the edit is flagged, audited and counted, never ignored.  An
        edit that changes nothing a verdict holds (the same verdict and categories) is
        audited and changes nothing."""
        db, svc = self.rt.db, self.rt.review
        form = parse_result(ann.get("result"))
        item_id = judged.item_id
        before = judged.verdict
        same = (before is not None and form.verdict == before
                and sorted(form.categories) == sorted(judged.categories))
        code: str | None = None
        detail = "the same verdict and categories: nothing changes"
        if not same:
            if reviewer is None:
                code, detail = ("labelstudio.unknown_user",
                                "the Label Studio user is not mapped to a lookfirst reviewer")
            elif form.verdict is None:
                code, detail = "labelstudio.form_invalid", "no verdict chosen"
            else:
                try:
                    with db.transaction() as s:
                        item = item_state(s, item_id=item_id)
                        assert item is not None
                        svc.claim(s, reviewer_id=reviewer, queue=item.queue, item_id=item_id)
                        res = svc.decide(s, item_id=item_id, reviewer_id=reviewer,
                                         verdict=form.verdict, categories=form.categories,
                                         note=form.notes)
                        record_labelstudio_annotation_edit(
                            s, annotation_id=judged.annotation_id, result_sha256=digest,
                            code=None, now=self._now())
                        self._audit(s, actor=reviewer, event="labelstudio.annotation_edited",
                                    subject_id=item_id,
                                    data={"annotation_id": judged.annotation_id, "via": via,
                                          "recorded": True, "verdict_id": res.verdict_id})
                    return "recorded"
                except ReviewError as exc:
                    code, detail = exc.code, exc.detail
        with db.transaction() as s:
            record_labelstudio_annotation_edit(s, annotation_id=judged.annotation_id,
                                               result_sha256=digest, code=code,
                                               now=self._now())
            self._audit(s, actor=reviewer or "labelstudio-user:unknown",
                        event="labelstudio.annotation_edited", subject_id=item_id,
                        data={"annotation_id": judged.annotation_id, "via": via,
                              "recorded": False, "refused": code, "detail": detail[:300],
                              "verdict_before": before,
                              "verdict_now": form.verdict})
        if code is None:
            return "already"
        log.warning("an annotation edited after its verdict was refused (flagged)",
                    extra={"item_id": item_id, "annotation_id": judged.annotation_id,
                           "code": code})
        return "refused"

    def _reviewer_for(self, s: Session, ls_user: int | None) -> str | None:
        if ls_user is None:
            return None
        known = labelstudio_reviewer_for_user(s, ls_user_id=ls_user)
        if known is not None:
            return known
        try:
            email = self.client.user_email(ls_user)
        except (LabelStudioUnavailable, PipelineError):
            return None
        if email is None:
            return None
        return labelstudio_reviewer_for_email(s, email=email, ls_user_id=ls_user)

    def poll(self) -> PollReport:
        """Reconcile the annotations of every task Label Studio updated since the last poll
        (what the webhook missed, and edits): a cursor per project, Label Studio's own
        `updated_at` of the last task read, kept in the database; each round reads again
        the tasks of the last `poll_overlap` before it (one committed late is not missed)."""
        rep = PollReport()
        with self.rt.db.transaction() as s:
            projects = [p.project_id for p in labelstudio_projects(s).values()]
            cursors: dict[str, str] = dict(
                labelstudio_sync_state(s, name="cursor").get("projects", {}))
        try:
            for pid in projects:
                since = cursors.get(str(pid))
                if since is not None:
                    since = iso_utc(dt.datetime.fromisoformat(since.replace("Z", "+00:00"))
                                    - self.poll_overlap)
                deferred, newest = rep.deferred, cursors.get(str(pid))
                for task_id, anns, updated in self.client.annotated_tasks(pid, since=since):
                    rep.tasks_seen += 1
                    for a in anns:
                        outcome = self.reconcile(task_id, a, via="poller")
                        if outcome in ("recorded", "refused", "deferred", "already"):
                            setattr(rep, outcome, getattr(rep, outcome) + 1)
                    if updated is not None:
                        newest = max(newest or updated, updated)
                # the whole project was read (tasks come in id order, not by time): the
                # cursor moves, unless an annotation waits to be judged again
                if rep.deferred == deferred and newest is not None:
                    cursors[str(pid)] = newest
        except (LabelStudioUnavailable, PipelineError) as exc:
            rep.error = exc.code
        now = self._now()
        self._save_state("cursor", {"projects": cursors})
        self._save_state("poll", {"at": now.isoformat(), "error": rep.error,
                                  "recorded": rep.recorded, "refused": rep.refused,
                                  "tasks_read": rep.tasks_seen,
                                  "ok_at": now.isoformat() if rep.error is None else
                                  self._last_ok()})
        return rep

    def _last_ok(self) -> str | None:
        with self.rt.db.transaction() as s:
            last = labelstudio_sync_state(s, name="poll")
        ok = last.get("ok_at")
        return str(ok) if ok else None

    def _save_state(self, name: str, value: Mapping[str, Any]) -> None:
        with self.rt.db.transaction() as s:
            save_labelstudio_sync_state(s, name=name, value=value, now=self._now())

    def sync_once(self, worker: OutboxWorker | None = None) -> dict[str, Any]:
        """One round: enqueue new items and the closing of tasks whose item was decided
        (anywhere), deliver them (through `worker`, over the Label Studio sink; a new one when
        None), poll annotations."""
        with self.rt.db.transaction() as s:
            enqueued = self.enqueue_tasks(s)
            closing = enqueue_labelstudio_closures(s, now=self._now())
        own = worker is None
        worker = worker or task_worker(self)
        try:
            delivery = worker.run_once(limit=200)
        finally:
            if own:
                worker.close()
        poll = self.poll()
        return {"enqueued": enqueued, "closing": closing, "delivered": delivery.delivered,
                "retried": delivery.retried, "dead": delivery.dead,
                "recorded": poll.recorded, "refused": poll.refused, "deferred": poll.deferred,
                "poll_error": poll.error}


def status(rt: Runtime) -> dict[str, Any]:
    """Backlog, last sync and the poller's lag, for `lookfirst labelstudio status`."""
    with rt.db.transaction() as s:
        st = labelstudio_sync_status(s)
    poll = st.state.get("poll")
    lag = None
    if poll and poll.get("ok_at"):
        lag = round((rt.review.clock() - dt.datetime.fromisoformat(str(poll["ok_at"])))
                    .total_seconds(), 1)
    return {
        "url": rt.settings.labelstudio_url,
        "projects": st.projects,
        "tasks": st.tasks,
        "open_items_without_task": st.open_items_without_task,
        "outbox": st.outbox,
        "annotations": st.annotations,
        "edits_refused": st.edits_refused,
        "last_poll": poll,
        #: seconds since the last poll that read Label Studio without an error: nothing
        #: annotated or edited before then is waiting (None: never polled)
        "poll_lag_s": lag,
        "cursor": (st.state.get("cursor") or {}).get("projects", {}),
    }
