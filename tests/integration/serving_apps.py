"""App factories for tests/integration/test_serving.py: one that serves its process id (and
can be told to block its event loop), one that cannot start, one that never finishes starting."""

from __future__ import annotations

import os
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route


def pid_app() -> Starlette:
    async def pid(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(os.getpid()))

    async def hang(request: Request) -> PlainTextResponse:
        time.sleep(3600)  # blocks the event loop: this process is hung
        return PlainTextResponse("never")

    return Starlette(routes=[Route("/pid", pid), Route("/hang", hang)])


def broken_app() -> Starlette:
    raise RuntimeError("this app cannot start")


def stuck_app() -> Starlette:
    time.sleep(3600)  # never finishes starting
    raise AssertionError("unreachable")
