"""The Label Studio sync's records: which project shows which queue, which task shows which
item, which Label Studio user acts as which reviewer, each annotation's judgement, the sync's
named state, and the task messages for the outbox.  Repository functions: keyword-only, plain
values out, never a commit (the sync owns its transactions); no HTTP, no Label Studio client."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, String, cast, func, literal, select
from sqlalchemy.orm import Session

from review import outbox
from review.schema import (
    LabelStudioAnnotation,
    LabelStudioProject,
    LabelStudioReviewer,
    LabelStudioSync,
    LabelStudioTask,
    Outbox,
    ReviewItem,
    VerdictRow,
)
from review.states import OPEN_ITEM_STATUSES

#: the outbox topic of a task to create ("labelstudio.task"); payload {"item_id", "queue"}.
#: Under the internal prefix, so the platform's webhook sink never leases it
TASK_TOPIC = outbox.INTERNAL_TOPIC_PREFIX + "task"
#: the outbox topic of a task to close: its item was decided (anywhere: CLI, API, bulk, Label
#: Studio); payload {"item_id", "queue", "task_id", "project_id", "status", "resolution"}
CLOSE_TOPIC = outbox.INTERNAL_TOPIC_PREFIX + "close"


@dataclass(frozen=True, slots=True)
class JudgedAnnotation:
    """How an annotation was judged, and what it said then (its result's sha256)."""

    annotation_id: int
    item_id: int
    status: str
    verdict_id: int | None
    result_sha256: str | None
    edit_code: str | None
    #: the verdict it was recorded as (None: refused)
    verdict: str | None = None
    categories: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ProjectRecord:
    """The Label Studio project that shows one review queue, as last set up."""

    queue: str
    project_id: int
    #: sha256 of the labelling config last validated and applied
    config_sha256: str
    maximum_annotations: int


@dataclass(frozen=True, slots=True)
class SyncStatus:
    """What `lookfirst labelstudio status` reports from the record."""

    projects: list[str]
    tasks: int
    open_items_without_task: int
    #: the task messages' outbox backlog per status
    outbox: dict[str, int]
    #: judged annotations: recorded and refused
    annotations: dict[str, int]
    #: named sync state (e.g. "poll"), each with its `updated_at`
    state: dict[str, dict[str, Any]]
    #: annotations edited after they were judged whose edit was refused (flagged)
    edits_refused: int = 0


# ---- projects --------------------------------------------------------------------------------
def projects(s: Session) -> dict[str, ProjectRecord]:
    """queue -> its project."""
    return {p.queue: ProjectRecord(p.queue, p.project_id, p.config_sha256,
                                   p.maximum_annotations)
            for p in s.execute(select(LabelStudioProject)).scalars()}


def save_project(s: Session, *, queue: str, project_id: int, config_sha256: str,
                 maximum_annotations: int, now: dt.datetime) -> None:
    """Remember (or update) the project of `queue`; an unchanged one is left as it is."""
    r = s.get(LabelStudioProject, queue)
    if r is None:
        s.add(LabelStudioProject(queue=queue, project_id=project_id, config_sha256=config_sha256,
                                 maximum_annotations=maximum_annotations, created_at=now,
                                 updated_at=now))
    elif (r.project_id, r.config_sha256, r.maximum_annotations) != (
        project_id, config_sha256, maximum_annotations
    ):
        r.project_id, r.config_sha256 = project_id, config_sha256
        r.maximum_annotations, r.updated_at = maximum_annotations, now


# ---- reviewers ---------------------------------------------------------------------------------
def map_reviewer(s: Session, *, email: str, reviewer_id: str, ls_user_id: int | None,
                 now: dt.datetime) -> None:
    """The Label Studio user `email` acts as `reviewer_id` (a known user id is kept when none
    is given).  The caller checks the reviewer exists and audits the mapping."""
    row = s.get(LabelStudioReviewer, email)
    if row is None:
        s.add(LabelStudioReviewer(email=email, reviewer_id=reviewer_id, ls_user_id=ls_user_id,
                                  created_at=now))
    else:
        row.reviewer_id = reviewer_id
        row.ls_user_id = ls_user_id if ls_user_id is not None else row.ls_user_id


def reviewer_for_user(s: Session, *, ls_user_id: int) -> str | None:
    """The reviewer a Label Studio user id is mapped to (None: not seen by id yet)."""
    return s.execute(
        select(LabelStudioReviewer.reviewer_id).where(LabelStudioReviewer.ls_user_id == ls_user_id)
    ).scalar_one_or_none()


def reviewer_for_email(s: Session, *, email: str, ls_user_id: int) -> str | None:
    """The reviewer mapped by email (None: unmapped); the mapping learns the user's id, so
    the next look-up needs no call to Label Studio."""
    row = s.get(LabelStudioReviewer, email)
    if row is None:
        return None
    if row.ls_user_id is None:
        row.ls_user_id = ls_user_id
    return row.reviewer_id


# ---- tasks -------------------------------------------------------------------------------------
def _open_without_task(queues: list[str]) -> tuple[ColumnElement[bool], ...]:
    """Open review items of these queues that have no task yet."""
    has_task = select(LabelStudioTask.item_id).where(LabelStudioTask.item_id == ReviewItem.id)
    return (ReviewItem.queue.in_(queues), ReviewItem.status.in_(list(OPEN_ITEM_STATUSES)),
            ~has_task.exists())


def enqueue_tasks(s: Session, *, now: dt.datetime, limit: int = 1000) -> int:
    """One outbox message per open review item of a set-up queue that has no task yet, most
    urgent first; a message already written is not written again.  Returns how many."""
    queues = list(s.execute(select(LabelStudioProject.queue)).scalars())
    if not queues:
        return 0
    items = s.execute(
        select(ReviewItem.id, ReviewItem.queue)
        .where(*_open_without_task(queues))
        .order_by(ReviewItem.priority.desc(), ReviewItem.id)
        .limit(limit)
    ).all()
    keys = {f"{TASK_TOPIC}:{i}": (i, q) for i, q in items}
    have = outbox.known_keys(s, keys)
    n = 0
    for key, (item_id, queue) in keys.items():
        if key in have:
            continue
        outbox.enqueue(s, topic=TASK_TOPIC, key=key,
                       payload={"item_id": item_id, "queue": queue}, now=now)
        n += 1
    s.flush()
    return n


def record_tasks(s: Session, *, project_id: int, tasks: Mapping[int, int],
                 now: dt.datetime) -> None:
    """Remember item id -> task id for `project_id` (an item that has a task keeps it)."""
    for item_id, task_id in tasks.items():
        if s.get(LabelStudioTask, item_id) is None:
            s.add(LabelStudioTask(item_id=item_id, project_id=project_id, task_id=task_id,
                                  created_at=now))


def enqueue_closures(s: Session, *, now: dt.datetime, limit: int = 1000) -> int:
    """One outbox message per task whose item is no longer open (decided anywhere) and whose
    closing message was not written yet.  Returns how many."""
    key = literal(CLOSE_TOPIC + ":") + cast(LabelStudioTask.item_id, String)
    rows = s.execute(
        select(LabelStudioTask.item_id, LabelStudioTask.task_id, LabelStudioTask.project_id,
               ReviewItem.queue, ReviewItem.status, ReviewItem.resolution)
        .join(ReviewItem, ReviewItem.id == LabelStudioTask.item_id)
        .where(ReviewItem.status.not_in(list(OPEN_ITEM_STATUSES)),
               ~select(Outbox.id).where(Outbox.idempotency_key == key).exists())
        .order_by(LabelStudioTask.item_id)
        .limit(limit)
    ).all()
    for item_id, task_id, project_id, queue, status_, resolution in rows:
        outbox.enqueue(s, topic=CLOSE_TOPIC, key=f"{CLOSE_TOPIC}:{item_id}",
                       payload={"item_id": item_id, "queue": queue, "task_id": task_id,
                                "project_id": project_id, "status": status_,
                                "resolution": resolution}, now=now)
    s.flush()
    return len(rows)


def task_item(s: Session, *, task_id: int) -> int | None:
    """The review item a task shows (None: not one of ours)."""
    return s.execute(
        select(LabelStudioTask.item_id).where(LabelStudioTask.task_id == task_id)
    ).scalar_one_or_none()


# ---- annotations -------------------------------------------------------------------------------
def annotation_judged(s: Session, *, annotation_id: int) -> bool:
    return s.get(LabelStudioAnnotation, annotation_id) is not None


def judged_annotation(s: Session, *, annotation_id: int) -> JudgedAnnotation | None:
    r = s.get(LabelStudioAnnotation, annotation_id)
    if r is None:
        return None
    v = s.get(VerdictRow, r.verdict_id) if r.verdict_id is not None else None
    return JudgedAnnotation(r.annotation_id, r.item_id, r.status, r.verdict_id,
                            r.result_sha256, r.edit_code, v.verdict if v else None,
                            tuple(v.categories) if v else ())


def record_annotation_edit(s: Session, *, annotation_id: int, result_sha256: str,
                           code: str | None, now: dt.datetime) -> None:
    """An annotation edited after it was judged, judged again: what it now says, and the
    refusal's code (None when the edit changed nothing a verdict holds)."""
    r = s.get(LabelStudioAnnotation, annotation_id)
    assert r is not None
    r.result_sha256, r.edit_code, r.edited_at = result_sha256, code, now


def record_annotation(s: Session, *, annotation_id: int, task_id: int, item_id: int,
                      ls_user_id: int | None, reviewer_id: str | None, status: str,
                      code: str | None, verdict_id: int | None, via: str,
                      now: dt.datetime, result_sha256: str | None = None) -> None:
    """Judge an annotation once: `status` recorded (with its verdict) or refused (with the
    refusal's code).  A second judgement of it fails the transaction (IntegrityError)."""
    s.add(LabelStudioAnnotation(
        annotation_id=annotation_id, task_id=task_id, item_id=item_id, ls_user_id=ls_user_id,
        reviewer_id=reviewer_id, status=status, code=code, verdict_id=verdict_id, via=via,
        created_at=now, result_sha256=result_sha256))


# ---- sync state --------------------------------------------------------------------------------
def save_state(s: Session, *, name: str, value: Mapping[str, Any], now: dt.datetime) -> None:
    row = s.get(LabelStudioSync, name)
    if row is None:
        s.add(LabelStudioSync(name=name, value=dict(value), updated_at=now))
    else:
        row.value, row.updated_at = dict(value), now


def sync_state(s: Session, *, name: str) -> dict[str, Any]:
    """One named sync state's value ({} when never saved): the poller's cursor, one row."""
    row = s.get(LabelStudioSync, name)
    return dict(row.value) if row is not None else {}


def status(s: Session) -> SyncStatus:
    queues = list(s.execute(select(LabelStudioProject.queue)).scalars())
    without = s.execute(
        select(func.count()).select_from(ReviewItem).where(*_open_without_task(queues))
    ).scalar_one() if queues else 0
    anns = dict(s.execute(select(LabelStudioAnnotation.status, func.count())
                          .group_by(LabelStudioAnnotation.status)).all())
    state = {r.name: {**r.value, "updated_at": r.updated_at.isoformat()}
             for r in s.execute(select(LabelStudioSync)).scalars()}
    tasks = s.execute(select(func.count()).select_from(LabelStudioTask)).scalar_one()
    edits = s.execute(select(func.count()).select_from(LabelStudioAnnotation)
                      .where(LabelStudioAnnotation.edit_code.is_not(None))).scalar_one()
    return SyncStatus(
        projects=sorted(queues), tasks=int(tasks), open_items_without_task=int(without),
        outbox=outbox.backlog(s, topics=[TASK_TOPIC, CLOSE_TOPIC]),
        annotations={"recorded": int(anns.get("recorded", 0)),
                     "refused": int(anns.get("refused", 0))},
        state=state, edits_refused=int(edits),
    )
