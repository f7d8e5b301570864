"""The outbox's Label Studio sink: it turns `labelstudio.task` messages into Label Studio tasks.

Delivery is idempotent: before importing, the sink looks up which items already have a task in
their project, so a retry after a lost response creates nothing.  An item decided meanwhile has
nothing to show and counts as delivered.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pipeline.errors import PipelineError
from pipeline.labelstudio.client import LabelStudioUnavailable
from review import (
    DELIVERED,
    LABELSTUDIO_CLOSE_TOPIC,
    LABELSTUDIO_TASK_TOPIC,
    OPEN_ITEM_STATUSES,
    DeliveryFailed,
    DeliveryPolicy,
    OutboxMessage,
    OutboxWorker,
    SinkResult,
    item_state,
    labelstudio_projects,
    record_labelstudio_tasks,
)

if TYPE_CHECKING:
    from pipeline.labelstudio.sync import LabelStudioSync

#: the outbox topic of a task to create; payload {"item_id", "queue"} (review writes them)
TOPIC = LABELSTUDIO_TASK_TOPIC
#: the outbox topic of a task to close: its item was decided, wherever that happened
CLOSE_TOPIC = LABELSTUDIO_CLOSE_TOPIC


class TaskSink:
    """Creates the Label Studio task of each message's review item, one import per project;
    closes (marks labelled, with lookfirst's outcome in its meta) the task of an item decided
    anywhere."""

    topics: frozenset[str] | None = frozenset({TOPIC, CLOSE_TOPIC})

    def __init__(self, sync: LabelStudioSync) -> None:
        self.sync = sync

    def close(self) -> None:
        pass  # the client belongs to the sync

    def deliver(
        self, messages: Sequence[OutboxMessage]
    ) -> Iterator[tuple[OutboxMessage, SinkResult]]:
        by_queue: dict[str, list[OutboxMessage]] = {}
        for m in messages:
            if m.topic == CLOSE_TOPIC:
                yield m, self._close(m)
                continue
            by_queue.setdefault(str(m.payload["queue"]), []).append(m)
        with self.sync.rt.db.transaction() as s:
            projects = {q: p.project_id for q, p in labelstudio_projects(s).items()}
        for queue, group in by_queue.items():
            pid = projects.get(queue)
            if pid is None:
                for m in group:
                    yield m, DeliveryFailed(f"no Label Studio project for queue {queue}")
                continue
            results = self._push(pid, group)
            for m in group:
                yield m, results.get(m.id, DELIVERED)

    def _push(self, pid: int, group: Sequence[OutboxMessage]) -> dict[int, SinkResult]:
        """One project's tasks: those missing are imported, all are recorded as ours.  A
        failure fails every message of the group not already settled as delivered."""
        sync = self.sync
        results: dict[int, SinkResult] = {}
        try:
            present = sync.client.task_items(pid)
            todo: list[tuple[OutboxMessage, dict[str, Any]]] = []
            found: dict[int, int] = {}
            with sync.rt.db.transaction() as s:
                for m in group:
                    item_id = int(m.payload["item_id"])
                    if item_id in present:
                        found[item_id] = min(present[item_id])
                        continue
                    item = item_state(s, item_id=item_id)
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
                record_labelstudio_tasks(s, project_id=pid, tasks=found, now=now)
        except PipelineError as exc:  # LabelStudioUnavailable, or a refusal Label Studio named
            for m in group:
                results.setdefault(m.id, DeliveryFailed(exc.code))
        return results


    def _close(self, m: OutboxMessage) -> SinkResult:
        p = m.payload
        try:
            self.sync.client.close_task(int(p["task_id"]), {"lookfirst": {
                "item_id": p["item_id"], "status": p["status"],
                "resolution": p.get("resolution"),
                "note": "decided in lookfirst; nothing left to do here"}})
        except PipelineError as exc:
            return DeliveryFailed(exc.code)
        return DELIVERED


def task_worker(sync: LabelStudioSync, *, policy: DeliveryPolicy | None = None) -> OutboxWorker:
    """The outbox worker over the Label Studio sink, on the review store's clock."""
    return OutboxWorker(sync.rt.db, TaskSink(sync), policy=policy, clock=sync.rt.review.clock)
