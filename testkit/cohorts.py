"""A load client of many users, each with its own cohort cookie: what a canary's split and
stickiness are measured with (against nginx lua and haproxy alike)."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

from testkit.loadgen import error_kind, no_retry_session


@dataclass(frozen=True)
class Hit:
    at: float  # when it was sent: a step's window holds requests sent inside it
    user: str
    status: int  # 0: no answer
    slot: str
    error: str


@dataclass
class Users:
    """Keep-alive clients, each request as one of `users` distinct users (its cohort
    cookie), round robin over a shuffled list: every window of a few thousand requests
    sees each user about as often. Nothing is retried; every answer is recorded."""

    url: str
    cookie: str
    users: int = 3000
    workers: int = 4
    hits: list[Hit] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.names = [f"user-{i}" for i in range(self.users)]
        random.Random(7).shuffle(self.names)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, args=(i,), daemon=True)
                         for i in range(self.workers)]

    def __enter__(self) -> Users:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)

    def _work(self, worker: int) -> None:
        session = no_retry_session()
        i = worker
        while not self._stop.is_set():
            user = self.names[i % len(self.names)]
            i += self.workers
            status, slot, error = 0, "", ""
            sent = time.monotonic()
            try:
                r = session.get(self.url, headers={"Cookie": f"{self.cookie}={user}"},
                                timeout=(2, 10))
                status, slot = r.status_code, r.headers.get("X-Bluegreen-Slot", "")
            except Exception as exc:
                error = error_kind(exc)
            with self._lock:
                self.hits.append(Hit(sent, user, status, slot, error))

    def between(self, start: float, end: float) -> list[Hit]:
        with self._lock:
            return [h for h in self.hits if start <= h.at <= end]
