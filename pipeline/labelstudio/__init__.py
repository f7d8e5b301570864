"""Label Studio as the reviewers' UI, with lookfirst the system of record: the SDK client
(`client`), the labelling config and annotation form (`config`), setup, tasks out and verdicts
back (`sync`), the outbox sink that creates tasks (`sink`) and a local server (`server`).
"""

from __future__ import annotations

from pipeline.labelstudio.client import (
    WEBHOOK_ACTIONS,
    LabelStudioClient,
    LabelStudioNotSetUp,
    LabelStudioUnavailable,
)
from pipeline.labelstudio.config import (
    AS_POLICY,
    AnnotationForm,
    config_digest,
    label_config,
    parse_result,
)
from pipeline.labelstudio.sink import TOPIC, TaskSink, task_worker
from pipeline.labelstudio.sync import (
    SECRET_HEADER,
    WEBHOOK_PATH,
    LabelStudioSync,
    PollReport,
    SetupReport,
    status,
)

__all__ = [
    "AS_POLICY",
    "SECRET_HEADER",
    "TOPIC",
    "WEBHOOK_ACTIONS",
    "WEBHOOK_PATH",
    "AnnotationForm",
    "LabelStudioClient",
    "LabelStudioNotSetUp",
    "LabelStudioSync",
    "LabelStudioUnavailable",
    "PollReport",
    "SetupReport",
    "TaskSink",
    "config_digest",
    "label_config",
    "parse_result",
    "status",
    "task_worker",
]
