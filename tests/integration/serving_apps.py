"""App factories for tests/integration/test_serving.py: one that serves its process id, one
that cannot start."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route


def pid_app() -> Starlette:
    async def pid(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(os.getpid()))

    return Starlette(routes=[Route("/pid", pid)])


def broken_app() -> Starlette:
    raise RuntimeError("this app cannot start")
