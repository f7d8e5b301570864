"""The Label Studio client: label-studio-sdk 2.x behind the few calls the sync makes, and the
errors callers see (a dependency outage is `LabelStudioUnavailable`, retried, never a crash)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

import httpx

from pipeline.errors import ErrorKind, PipelineError

#: the webhook events the receiver acts on; anything else is acknowledged and ignored
WEBHOOK_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED"})


class LabelStudioUnavailable(PipelineError):
    """Label Studio is unavailable."""

    code = "dependency.labelstudio"
    kind = ErrorKind.UNAVAILABLE


class LabelStudioNotSetUp(PipelineError):
    """Label Studio is not set up: run `lookfirst labelstudio setup`."""

    code = "labelstudio.not_set_up"


def iso_utc(value: Any) -> str | None:
    """Label Studio's time (a datetime, or a string ending in Z) as ISO UTC with a Z."""
    if value is None:
        return None
    at = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(
        str(value).replace("Z", "+00:00"))
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LabelStudioRefused(PipelineError):
    """Label Studio refused the request (a 4xx answer: a bad project, config or token)."""

    code = "labelstudio.refused"


class LabelStudioClient:
    """label-studio-sdk 2.x behind the calls the sync makes; errors become
    LabelStudioUnavailable so callers retry instead of crashing."""

    def __init__(self, url: str, token: str, *, timeout_s: float = 10.0) -> None:
        from label_studio_sdk import LabelStudio

        self.url = url.rstrip("/")
        self.sdk = LabelStudio(  # type: ignore[no-untyped-call]
            base_url=self.url, api_key=token, timeout=timeout_s)
        self._emails: dict[int, str] = {}

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (httpx.HTTPError, OSError) as exc:
            raise LabelStudioUnavailable(
                f"Label Studio at {self.url} is unavailable ({type(exc).__name__})"
            ) from None
        except Exception as exc:  # the SDK's ApiError: a refusal we name, body left out
            status = getattr(exc, "status_code", None)
            if status is None:
                raise
            if status >= 500:
                raise LabelStudioUnavailable(f"Label Studio answered HTTP {status}") from None
            raise LabelStudioRefused(f"Label Studio refused the request (HTTP {status})"
                                     ) from None

    def health(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def projects(self) -> list[Any]:
        return list(self._call(lambda: list(self.sdk.projects.list(page_size=100))))

    def project(self, pid: int) -> Any:
        return self._call(self.sdk.projects.get, pid)

    def create_project(self, **kw: Any) -> int:
        return int(self._call(self.sdk.projects.create, **kw).id)

    def update_project(self, pid: int, **kw: Any) -> None:
        self._call(self.sdk.projects.update, pid, **kw)

    def validate_config(self, pid: int, config: str) -> None:
        self._call(self.sdk.projects.validate_label_config, pid, label_config=config)

    def webhooks(self, pid: int) -> list[Any]:
        return list(self._call(self.sdk.webhooks.list, project=str(pid)))

    def create_webhook(self, *, pid: int, url: str, headers: Mapping[str, str]) -> None:
        self._call(self.sdk.webhooks.create, url=url, project=pid, send_payload=True,
                   send_for_all_actions=False, actions=sorted(WEBHOOK_ACTIONS),
                   headers=dict(headers), is_active=True)

    def task_items(self, pid: int) -> dict[int, list[int]]:
        """lookfirst item id -> Label Studio task ids in one project (more than one: a bug)."""
        out: dict[int, list[int]] = {}

        def scan() -> None:
            t: Any
            for t in self.sdk.tasks.list(project=pid, page_size=100, include="id,data"):
                item = (t.data or {}).get("item_id")
                if item is not None:
                    out.setdefault(int(item), []).append(int(t.id))

        self._call(scan)
        return out

    def import_tasks(self, pid: int, tasks: list[dict[str, Any]]) -> list[int]:
        r = self._call(self.sdk.projects.import_tasks, pid, request=tasks,
                       return_task_ids=True)
        return [int(x) for x in (r.task_ids or [])]

    def annotated_tasks(self, pid: int, *, since: str | None = None
                        ) -> list[tuple[int, list[dict[str, Any]], str | None]]:
        """(task id, its annotations, its updated_at) of the annotated tasks of one project;
        with `since` (an ISO time), only those Label Studio updated after it (creating or
        editing an annotation updates its task), by the Data Manager's filter."""
        out: list[tuple[int, list[dict[str, Any]], str | None]] = []
        query = None
        if since is not None:
            query = json.dumps({"filters": {"conjunction": "and", "items": [
                {"filter": "filter:tasks:updated_at", "operator": "greater",
                 "type": "Datetime", "value": since}]}})

        def scan() -> None:
            t: Any
            for t in self.sdk.tasks.list(project=pid, page_size=100, fields="all",
                                         only_annotated=True, query=query):
                anns = [a if isinstance(a, dict) else a.dict() for a in (t.annotations or [])]
                out.append((int(t.id), anns, iso_utc(t.updated_at)))

        self._call(scan)
        return out

    def close_task(self, task_id: int, meta: Mapping[str, Any]) -> None:
        """Mark a task done in Label Studio: labelled (the queue's next-task order skips it)
        and its meta saying what lookfirst decided."""
        self._call(self.sdk.tasks.update, str(task_id), is_labeled=True, meta=dict(meta))

    def user_email(self, user_id: int) -> str | None:
        if user_id not in self._emails:
            u = self._call(self.sdk.users.get, user_id)
            if u is None or not getattr(u, "email", None):
                return None
            self._emails[user_id] = str(u.email).lower()
        return self._emails[user_id]

    def user_id_for(self, email: str) -> int | None:
        for u in self._call(lambda: list(self.sdk.users.list())):
            if str(getattr(u, "email", "")).lower() == email.lower():
                return int(u.id)
        return None

