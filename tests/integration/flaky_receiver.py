"""The platform's webhook receiver, as the outbox tests run it on 127.0.0.1.

A fake is allowed here: it stands for the user's own system.  It is nonetheless a real HTTP
server (stdlib ThreadingHTTPServer) that does what a careful platform does: it verifies the
HMAC signature, dedupes by Idempotency-Key and records each message's effect once.  And it
misbehaves at random (seeded): it fails with 500 before doing anything, it hangs past the
client's timeout (and then applies the effect anyway, as a slow server does), or it applies
the effect and then answers 500 (it "answers twice": the effect happened, the sender
believes it failed and must redeliver without doubling the effect).
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pipeline.delivery import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature


@dataclass(frozen=True)
class Faults:
    """Probabilities of each misbehaviour per accepted request (the rest succeed)."""

    fail: float = 0.0  # 500 before any effect
    hang: float = 0.0  # sleep past the client's timeout, then apply the effect
    twice: float = 0.0  # apply the effect, then answer 500
    hang_s: float = 0.5

    def __post_init__(self) -> None:
        assert 0 <= self.fail + self.hang + self.twice <= 1


@dataclass
class Effect:
    topic: str
    payload_digest: str


@dataclass
class Stats:
    requests: int = 0
    rejected: int = 0  # bad signature, stale stamp or a body that does not match its key
    applied: int = 0
    duplicates_suppressed: int = 0  # a redelivery of a key whose effect already happened
    conflicts: int = 0  # a redelivery whose body differs from the first: a sender bug
    faults: Counter[str] = field(default_factory=Counter)
    requests_per_key: Counter[str] = field(default_factory=Counter)


class FlakyReceiver:
    """Start with `start()` (or as a context manager); `url` is where to POST."""

    def __init__(
        self,
        *,
        secret: str,
        faults: Faults | None = None,
        seed: int = 0,
        max_skew_s: float | None = None,
    ) -> None:
        self.secret = secret
        self.faults = faults or Faults()
        self.max_skew_s = max_skew_s  # None: the sender runs on a fake clock
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self.effects: dict[str, Effect] = {}
        self.stats = Stats()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="flaky-receiver", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/webhook"

    def start(self) -> FlakyReceiver:
        self._thread.start()
        return self

    def stop(self, *, drain_s: float = 10.0) -> None:
        """Stop accepting; wait (bounded) for requests still sleeping so effects are final."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=drain_s)
        deadline = time.monotonic() + drain_s
        with self._idle:
            while self._in_flight and time.monotonic() < deadline:
                self._idle.wait(timeout=0.05)
            assert self._in_flight == 0, "receiver handlers still running after the drain"

    def __enter__(self) -> FlakyReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_faults(self, faults: Faults) -> None:
        with self._lock:
            self.faults = faults

    def wait_idle(self, *, timeout_s: float = 10.0) -> None:
        """Wait until no handler is running (a hung one applies its effect late)."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._in_flight and time.monotonic() < deadline:
                self._idle.wait(timeout=0.05)

    # ---- what the platform does with one request -------------------------------------------
    def _accept(self, headers: Any, body: bytes) -> tuple[str, str | None]:
        """Returns (what to do, key).  Decided under the lock: the RNG is shared."""
        key = headers.get("Idempotency-Key") or ""
        ts = headers.get(TIMESTAMP_HEADER) or ""
        sig = headers.get(SIGNATURE_HEADER) or ""
        with self._lock:
            self.stats.requests += 1
            ok = bool(key) and verify_signature(self.secret, ts, body, sig)
            if ok and self.max_skew_s is not None:
                ok = ts.isdigit() and abs(time.time() - int(ts)) <= self.max_skew_s
            if ok:
                try:
                    ok = json.loads(body).get("id") == key
                except ValueError:
                    ok = False
            if not ok:
                self.stats.rejected += 1
                return "reject", None
            self.stats.requests_per_key[key] += 1
            r = self._rng.random()
            f = self.faults
            if r < f.fail:
                what = "fail"
            elif r < f.fail + f.hang:
                what = "hang"
            elif r < f.fail + f.hang + f.twice:
                what = "twice"
            else:
                what = "ok"
            if what != "ok":
                self.stats.faults[what] += 1
            return what, key

    def _apply(self, key: str, body: bytes) -> None:
        """The effect, once per key: the dedupe is atomic with the check."""
        msg = json.loads(body)
        digest = hashlib.sha256(body).hexdigest()
        with self._lock:
            have = self.effects.get(key)
            if have is not None:
                self.stats.duplicates_suppressed += 1
                if have.payload_digest != digest:  # a redelivery must carry the same message
                    self.stats.conflicts += 1
                return
            self.effects[key] = Effect(topic=msg["topic"], payload_digest=digest)
            self.stats.applied += 1

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: a clean shutdown
            timeout = 10

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # request lines are noise in test output

            def _answer(self, code: int) -> None:
                try:
                    self.send_response(code)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender gave up (timeout) and closed its end

            def do_POST(self) -> None:  # noqa: N802
                with receiver._lock:
                    receiver._in_flight += 1
                try:
                    n = int(self.headers.get("Content-Length") or 0)
                    body = self.rfile.read(n)
                    what, key = receiver._accept(self.headers, body)
                    if what == "reject":
                        self._answer(401)
                    elif what == "fail":
                        self._answer(500)
                    elif what == "hang":
                        time.sleep(receiver.faults.hang_s)
                        assert key is not None
                        receiver._apply(key, body)
                        self._answer(200)
                    elif what == "twice":
                        assert key is not None
                        receiver._apply(key, body)
                        self._answer(500)
                    else:
                        assert key is not None
                        receiver._apply(key, body)
                        self._answer(200)
                finally:
                    with receiver._idle:
                        receiver._in_flight -= 1
                        receiver._idle.notify_all()

        return Handler
