"""The outbox's Label Studio sink: it turns `labelstudio.task` messages into Label Studio tasks.

Delivery is idempotent: before importing, the sink looks up which items already have a task in
their project, so a retry after a lost response creates nothing.  An item decided meanwhile has
nothing to show and counts as delivered.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from pipeline.errors import PipelineError
from pipeline.labelstudio.client import LabelStudioUnavailable
from review.outbox import (
    DELIVERED,
    DeliveryPolicy,
    Failed,
    Message,
    OutboxWorker,
    SinkResult,
)
from review.schema import LabelStudioProject, LabelStudioTask, ReviewItem
from review.states import OPEN_ITEM_STATUSES

if TYPE_CHECKING:
    from pipeline.labelstudio.sync import LabelStudioSync

#: the outbox topic of a task to create; payload {"item_id", "queue"}
TOPIC = "labelstudio.task"


class TaskSink:
    """Creates the Label Studio task of each message's review item, one import per project."""

    topics: frozenset[str] | None = frozenset({TOPIC})

    def __init__(self, sync: LabelStudioSync) -> None:
        self.sync = sync

    def close(self) -> None:
        pass  # the client belongs to the sync

    def deliver(self, messages: Sequence[Message]) -> Iterator[tuple[Message, SinkResult]]:
        by_queue: dict[str, list[Message]] = {}
        for m in messages:
            by_queue.setdefault(str(m.payload["queue"]), []).append(m)
        with self.sync.rt.db.transaction() as s:
            projects = {p.queue: p.project_id
                        for p in s.execute(select(LabelStudioProject)).scalars()}
        for queue, group in by_queue.items():
            pid = projects.get(queue)
            if pid is None:
                for m in group:
                    yield m, Failed(f"no Label Studio project for queue {queue}")
                continue
            results = self._push(pid, group)
            for m in group:
                yield m, results.get(m.id, DELIVERED)

    def _push(self, pid: int, group: Sequence[Message]) -> dict[int, SinkResult]:
        """One project's tasks: those missing are imported, all are recorded as ours.  A
        failure fails every message of the group not already settled as delivered."""
        sync = self.sync
        results: dict[int, SinkResult] = {}
        try:
            present = sync.client.task_items(pid)
            todo: list[tuple[Message, dict[str, Any]]] = []
            found: dict[int, int] = {}
            with sync.rt.db.transaction() as s:
                for m in group:
                    item_id = int(m.payload["item_id"])
                    if item_id in present:
                        found[item_id] = min(present[item_id])
                        continue
                    item = s.get(ReviewItem, item_id)
                    if item is None or item.status not in OPEN_ITEM_STATUSES:
                        results[m.id] = DELIVERED  # decided meanwhile: nothing to show
                        continue
                    todo.append((m, sync.task_data(s, item_id)))
            if todo:
                ids = sync.client.import_tasks(pid, [t for _, t in todo])
                if len(ids) != len(todo):
                    raise LabelStudioUnavailable("Label Studio returned no task ids")
                for (m, _), tid in zip(todo, ids, strict=True):
                    found[int(m.payload["item_id"])] = tid
            now = sync.rt.review.clock()
            with sync.rt.db.transaction() as s:
                for item_id, tid in found.items():
                    if s.get(LabelStudioTask, item_id) is None:
                        s.add(LabelStudioTask(item_id=item_id, project_id=pid, task_id=tid,
                                              created_at=now))
        except PipelineError as exc:  # LabelStudioUnavailable, or a refusal Label Studio named
            for m in group:
                results.setdefault(m.id, Failed(exc.code))
        return results


def task_worker(sync: LabelStudioSync, *, policy: DeliveryPolicy | None = None) -> OutboxWorker:
    """The outbox worker over the Label Studio sink, on the review store's clock."""
    return OutboxWorker(sync.rt.db, TaskSink(sync), policy=policy, clock=sync.rt.review.clock)
