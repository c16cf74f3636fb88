"""The durable job queue and its history, in one SQLite file (WAL mode, no server to run).

Invariants, each kept inside one IMMEDIATE transaction:
  - a delivery id is accepted once per provider; a replay finds the original jobs;
  - a lane (app/environment) has at most ONE pending job: a newer push supersedes the
    pending one, so pushes that arrive while a deploy runs become one deploy of the newest;
  - a job leaves `pending` only through claim_next(), which the lane's single worker calls;
  - a job found `running` when the workers start again was interrupted (the service died
    mid-deploy). It is marked `interrupted` and reported, never retried: half a deploy is
    something a person looks at.
  - delivery ids are never pruned, so they outlive any replay window; they are a courtesy
    for senders' redeliveries, not the replay defence (the sender chooses them). The defence
    is in guards.py, and reads what this queue knows a lane deployed (`last_deployed`).
  - a job is `explicit` when a person asked for it (`bluegreen jobs --retry`): the replay and
    rollback guards step aside for it.
The rollback quarantine lives here too: `rollbacks` (facts read from the apps' deploy
history: this commit was rolled back in this lane at that time) and `allowances` (a person
said `bluegreen release allow`, or deployed the commit by hand after the rollback). A commit
is quarantined while a rollback of it is newer than every allowance of it.
Every call opens its own short-lived connection, so any thread (or the poll process) may
use the queue without sharing a connection.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PENDING = "pending"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
INTERRUPTED = "interrupted"
SUPERSEDED = "superseded"
SKIPPED = "skipped"  # a guard refused it (replayed, older commit, rolled back); summary says why
STATES = (PENDING, RUNNING, SUCCEEDED, FAILED, INTERRUPTED, SUPERSEDED, SKIPPED)
FINISHED = (SUCCEEDED, FAILED, INTERRUPTED, SUPERSEDED, SKIPPED)
ALL_LANES = "*"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    lane          TEXT NOT NULL,
    app           TEXT NOT NULL,
    environment   TEXT NOT NULL,
    rule          TEXT NOT NULL,
    action        TEXT NOT NULL,
    state         TEXT NOT NULL,
    provider      TEXT NOT NULL,
    delivery_id   TEXT,
    repo          TEXT NOT NULL DEFAULT '',
    branch        TEXT NOT NULL DEFAULT '',
    sha           TEXT NOT NULL DEFAULT '',
    who           TEXT NOT NULL DEFAULT '',
    build_url     TEXT NOT NULL DEFAULT '',
    event         TEXT NOT NULL,
    created_at    REAL NOT NULL,
    started_at    REAL,
    finished_at   REAL,
    superseded_by INTEGER,
    summary       TEXT NOT NULL DEFAULT '',
    exit_code     INTEGER,
    deploy_argv   TEXT,
    log_path      TEXT NOT NULL DEFAULT '',
    log_tail      TEXT NOT NULL DEFAULT '',
    explicit      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_lane_state ON jobs (lane, state);
CREATE INDEX IF NOT EXISTS jobs_delivery ON jobs (provider, delivery_id);
CREATE TABLE IF NOT EXISTS deliveries (
    provider    TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (provider, delivery_id)
);
CREATE TABLE IF NOT EXISTS poll_state (
    remote     TEXT NOT NULL,
    branch     TEXT NOT NULL,
    sha        TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (remote, branch)
);
CREATE TABLE IF NOT EXISTS rollbacks (
    lane           TEXT NOT NULL,
    sha            TEXT NOT NULL,
    release        TEXT NOT NULL DEFAULT '',
    rolled_back_at REAL NOT NULL,
    who            TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (lane, sha, rolled_back_at)
);
CREATE TABLE IF NOT EXISTS allowances (
    lane       TEXT NOT NULL,
    sha        TEXT NOT NULL,
    allowed_at REAL NOT NULL,
    who        TEXT NOT NULL DEFAULT '',
    why        TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (lane, sha, allowed_at)
);
"""
# Columns added after the first release; added to an older database when it is opened
# (under a write lock: `serve`, `poll` and a CLI may open a new database at the same time).
_ADDED_COLUMNS = {"explicit": "INTEGER NOT NULL DEFAULT 0"}


@dataclass(frozen=True)
class JobRequest:
    """What the receiver (or the poller) asks for; one per matching rule."""

    lane: str
    app: str
    environment: str
    rule: str
    action: str
    provider: str
    event: dict[str, Any]
    delivery_id: str | None = None
    repo: str = ""
    branch: str = ""
    sha: str = ""
    who: str = ""
    build_url: str = ""
    explicit: bool = False  # a person asked for exactly this (the guards step aside)


@dataclass(frozen=True)
class Job:
    id: int
    lane: str
    app: str
    environment: str
    rule: str
    action: str
    state: str
    provider: str
    delivery_id: str | None
    repo: str
    branch: str
    sha: str
    who: str
    build_url: str
    event: dict[str, Any]
    created_at: float
    started_at: float | None
    finished_at: float | None
    superseded_by: int | None
    summary: str
    exit_code: int | None
    deploy_argv: list[str] | None
    log_path: str
    log_tail: str
    explicit: bool = False

    def public(self, *, with_log: bool = False) -> dict[str, Any]:
        """The JSON shape of /jobs and `--json`. The log tail is opt-in: build output can
        echo things an HTTP client should not see."""
        data = asdict(self)
        data.pop("event")
        if not with_log:
            data.pop("log_tail")
        return data


@dataclass(frozen=True)
class Submitted:
    job_ids: list[int]
    superseded: list[int]
    duplicate: bool = False


@dataclass(frozen=True)
class RolledBack:
    """A commit some lane's deploy history says was rolled back (and not allowed since)."""

    lane: str
    sha: str
    release: str
    rolled_back_at: float
    who: str


@dataclass(frozen=True)
class Deployed:
    job_id: int
    sha: str
    finished_at: float


def _job(row: sqlite3.Row) -> Job:
    data = dict(row)
    data["event"] = json.loads(data["event"])
    data["deploy_argv"] = json.loads(data["deploy_argv"]) if data["deploy_argv"] else None
    data["explicit"] = bool(data.get("explicit"))
    return Job(**data)


class JobQueue:
    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        db_path.parent.mkdir(parents=True, exist_ok=True)
        # Two processes creating the file at once (serve and poll starting together, a CLI
        # reading meanwhile): switching to WAL answers "database is locked" at once instead
        # of waiting on the busy timeout, so the loser tries again.
        deadline = time.monotonic() + 30.0
        while True:
            try:
                self._initialise()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _initialise(self) -> None:
        with self._connect() as db:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            have = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
        if not set(_ADDED_COLUMNS) <= have:
            with self._transaction() as db:
                have = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
                for column, declaration in _ADDED_COLUMNS.items():
                    if column not in have:
                        db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {declaration}")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            # FULL: a job acknowledged with 202 must survive a power cut, not just a crash.
            db.execute("PRAGMA synchronous=FULL")
            yield db
        finally:
            db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # ---- intake ------------------------------------------------------------------------

    def submit(self, provider: str, delivery_id: str | None, requests: Sequence[JobRequest],
               *, poll_mark: tuple[str, str, str] | None = None, also_seen: str | None = None,
               now: float | None = None) -> Submitted:
        """Enqueue one job per request, atomically with the delivery record and, for the
        poller, with the new last-seen SHA (so a crash can neither lose nor repeat a push).

        `also_seen` is a second key that must be new too (a timestamped signature: the same
        signed request sent again inside its window, under any delivery id, is a duplicate)."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            if delivery_id is not None:
                seen = db.execute("SELECT 1 FROM deliveries WHERE provider = ? AND "
                                  "delivery_id = ?", (provider, delivery_id)).fetchone()
                if seen:
                    rows = db.execute("SELECT id FROM jobs WHERE provider = ? AND delivery_id = ?"
                                      " ORDER BY id", (provider, delivery_id)).fetchall()
                    return Submitted([r["id"] for r in rows], [], duplicate=True)
            if also_seen is not None:
                inserted = db.execute(
                    "INSERT OR IGNORE INTO deliveries (provider, delivery_id, received_at) "
                    "VALUES (?, ?, ?)", (provider + "#signature", also_seen, now)).rowcount
                if not inserted:
                    return Submitted([], [], duplicate=True)
            if delivery_id is not None:
                db.execute("INSERT INTO deliveries (provider, delivery_id, received_at) "
                           "VALUES (?, ?, ?)", (provider, delivery_id, now))
            job_ids: list[int] = []
            superseded: list[int] = []
            for req in requests:
                cursor = db.execute(
                    "INSERT INTO jobs (lane, app, environment, rule, action, state, provider,"
                    " delivery_id, repo, branch, sha, who, build_url, event, created_at,"
                    " explicit) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (req.lane, req.app, req.environment, req.rule, req.action, PENDING,
                     req.provider, req.delivery_id, req.repo, req.branch, req.sha, req.who,
                     req.build_url, json.dumps(req.event), now, int(req.explicit)))
                new_id = int(cursor.lastrowid or 0)
                older = db.execute("SELECT id FROM jobs WHERE lane = ? AND state = ? AND id != ?",
                                   (req.lane, PENDING, new_id)).fetchall()
                for row in older:
                    db.execute(
                        "UPDATE jobs SET state = ?, superseded_by = ?, finished_at = ?,"
                        " summary = ? WHERE id = ?",
                        (SUPERSEDED, new_id, now, f"superseded by job {new_id} (newer push)",
                         row["id"]))
                    superseded.append(row["id"])
                job_ids.append(new_id)
            if poll_mark is not None:
                self._record_seen(db, *poll_mark, now=now)
            return Submitted(job_ids, superseded)

    def retry(self, job_id: int, now: float | None = None) -> Submitted:
        """A person's decision to run a finished job again: a new pending job with the same
        event in the same lane, marked explicit (the replay and rollback guards let a person
        deploy an older commit on purpose). Refused while the lane has a pending job: that
        one is newer, and a retry must never replace it with an older commit."""
        job = self.get(job_id)
        if job is None:
            raise LookupError(f"no job {job_id}")
        if job.state not in FINISHED:
            raise ValueError(f"job {job_id} is {job.state}; only finished jobs can be retried")
        waiting = self.list_jobs(states=[PENDING], limit=500)
        newer = [j.id for j in waiting if j.lane == job.lane]
        if newer:
            raise ValueError(f"lane {job.lane} already has pending job {newer[0]}; it runs "
                             "next, so a retry could only replace it with an older commit")
        request = JobRequest(lane=job.lane, app=job.app, environment=job.environment,
                             rule=job.rule, action=job.action, provider=job.provider,
                             event=job.event, delivery_id=None, repo=job.repo,
                             branch=job.branch, sha=job.sha, who=job.who,
                             build_url=job.build_url, explicit=True)
        return self.submit(job.provider, None, [request], now=now)

    # ---- the worker side ----------------------------------------------------------------

    def claim_next(self, lane: str, *, quiet_period: float = 0.0,
                   now: float | None = None) -> Job | None:
        """The lane's pending job, now running; None if there is none or it is still in its
        quiet period (waiting for more pushes to coalesce)."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM jobs WHERE lane = ? AND state = ?",
                          (lane, RUNNING)).fetchone():
                return None
            row = db.execute("SELECT id FROM jobs WHERE lane = ? AND state = ? AND created_at <= ?"
                             " ORDER BY id LIMIT 1", (lane, PENDING, now - quiet_period)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = ?, started_at = ? WHERE id = ?",
                       (RUNNING, now, row["id"]))
            found = db.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone()
            return _job(found)

    def seconds_until_due(self, lane: str, quiet_period: float,
                          now: float | None = None) -> float | None:
        now = time.time() if now is None else now
        with self._connect() as db:
            row = db.execute("SELECT MIN(created_at) AS t FROM jobs WHERE lane = ? AND state = ?",
                             (lane, PENDING)).fetchone()
        if row is None or row["t"] is None:
            return None
        return max(0.0, row["t"] + quiet_period - now)

    def note(self, job_id: int, *, build_url: str | None = None,
             deploy_argv: list[str] | None = None, log_path: str | None = None) -> None:
        """Record facts learnt while a job runs, so an interrupted job still shows them."""
        sets: list[str] = []
        values: list[Any] = []
        for column, value in (("build_url", build_url), ("log_path", log_path),
                              ("deploy_argv", json.dumps(deploy_argv) if deploy_argv else None)):
            if value is not None:
                sets.append(f"{column} = ?")
                values.append(value)
        if sets:
            with self._transaction() as db:
                db.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?",  # noqa: S608
                           (*values, job_id))

    def finish(self, job_id: int, state: str, summary: str, *, exit_code: int | None = None,
               log_tail: str = "", now: float | None = None) -> None:
        if state not in FINISHED:
            raise ValueError(f"not a finished state: {state}")
        now = time.time() if now is None else now
        with self._transaction() as db:
            db.execute("UPDATE jobs SET state = ?, summary = ?, exit_code = ?, log_tail = ?,"
                       " finished_at = ? WHERE id = ? AND state = ?",
                       (state, summary, exit_code, log_tail, now, job_id, RUNNING))

    def interrupt_running(self, reason: str, now: float | None = None) -> list[Job]:
        """Called once by whoever starts the workers (holding the runner lock): any job
        still `running` belongs to a process that died."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            rows = db.execute("SELECT * FROM jobs WHERE state = ? ORDER BY id",
                              (RUNNING,)).fetchall()
            db.execute("UPDATE jobs SET state = ?, summary = ?, finished_at = ? WHERE state = ?",
                       (INTERRUPTED, reason, now, RUNNING))
        return [_job(r) for r in rows]

    def abandon_pending(self, lanes: Sequence[str], reason: str,
                        now: float | None = None) -> list[int]:
        """Fail pending jobs of lanes no rule serves any more (the config changed while they
        waited); nothing would ever run them, and `pending` forever would be a lie."""
        now = time.time() if now is None else now
        marks = ", ".join("?" for _ in lanes) or "''"
        with self._transaction() as db:
            rows = db.execute(f"SELECT id FROM jobs WHERE state = ? AND lane NOT IN ({marks})",  # noqa: S608
                              (PENDING, *lanes)).fetchall()
            ids = [r["id"] for r in rows]
            for job_id in ids:
                db.execute("UPDATE jobs SET state = ?, summary = ?, finished_at = ? WHERE id = ?",
                           (FAILED, reason, now, job_id))
        return ids

    # ---- reading -----------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def list_jobs(self, *, states: Sequence[str] = (), app: str = "",
                  limit: int = 50) -> list[Job]:
        where: list[str] = []
        values: list[Any] = []
        if states:
            where.append(f"state IN ({', '.join('?' for _ in states)})")
            values.extend(states)
        if app:
            where.append("app = ?")
            values.append(app)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._connect() as db:
            rows = db.execute(f"SELECT * FROM jobs {clause} ORDER BY id DESC LIMIT ?",  # noqa: S608
                              (*values, limit)).fetchall()
        return [_job(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._connect() as db:
            rows = db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall()
        found = {r["state"]: r["n"] for r in rows}
        return {state: found.get(state, 0) for state in STATES}

    # ---- poller state ------------------------------------------------------------------

    def last_seen(self, remote: str, branch: str) -> str | None:
        with self._connect() as db:
            row = db.execute("SELECT sha FROM poll_state WHERE remote = ? AND branch = ?",
                             (remote, branch)).fetchone()
        return row["sha"] if row else None

    def record_seen(self, remote: str, branch: str, sha: str) -> None:
        with self._transaction() as db:
            self._record_seen(db, remote, branch, sha, now=time.time())

    @staticmethod
    def _record_seen(db: sqlite3.Connection, remote: str, branch: str, sha: str, *,
                     now: float) -> None:
        db.execute("INSERT INTO poll_state (remote, branch, sha, updated_at) VALUES (?, ?, ?, ?)"
                   " ON CONFLICT (remote, branch) DO UPDATE SET sha = excluded.sha,"
                   " updated_at = excluded.updated_at", (remote, branch, sha, now))

    # ---- what a lane deployed (the replay guard) ---------------------------------------

    def deployed(self, lane: str, *, exclude: int | None = None,
                 limit: int = 200) -> list[Deployed]:
        """The lane's succeeded jobs that carried a commit, newest first."""
        with self._connect() as db:
            rows = db.execute("SELECT id, sha, finished_at FROM jobs WHERE lane = ? AND state = ?"
                              " AND sha != '' AND id != ? ORDER BY finished_at DESC, id DESC"
                              " LIMIT ?", (lane, SUCCEEDED, -1 if exclude is None else exclude,
                                           limit)).fetchall()
        return [Deployed(r["id"], r["sha"], r["finished_at"] or 0.0) for r in rows]

    # ---- rollback quarantine -----------------------------------------------------------

    def record_rollback(self, lane: str, sha: str, *, release: str, at: float,
                        who: str) -> bool:
        """Remember that `sha` was rolled back in `lane` at `at`; False if already known."""
        with self._transaction() as db:
            return bool(db.execute(
                "INSERT OR IGNORE INTO rollbacks (lane, sha, release, rolled_back_at, who)"
                " VALUES (?, ?, ?, ?, ?)", (lane, sha.lower(), release, at, who)).rowcount)

    def allow(self, lane: str, sha: str, *, who: str, why: str,
              at: float | None = None) -> bool:
        """Lift the quarantine of `sha` in `lane` (ALL_LANES: every lane) for every rollback
        up to `at`. False if this exact allowance was already recorded."""
        at = time.time() if at is None else at
        with self._transaction() as db:
            return bool(db.execute(
                "INSERT OR IGNORE INTO allowances (lane, sha, allowed_at, who, why)"
                " VALUES (?, ?, ?, ?, ?)", (lane, sha.lower(), at, who, why)).rowcount)

    def quarantined(self, lane: str = "") -> list[RolledBack]:
        """Commits rolled back more recently than they were allowed, newest first; one row
        per (lane, commit). All lanes when `lane` is ""."""
        where, values = ("WHERE r.lane = ?", (lane,)) if lane else ("", ())
        with self._connect() as db:
            rows = db.execute(
                "SELECT r.lane, r.sha, r.release, r.rolled_back_at, r.who FROM rollbacks r "  # noqa: S608
                f"{where} ORDER BY r.rolled_back_at DESC", values).fetchall()
            allowed: dict[tuple[str, str], float] = {}
            for row in db.execute("SELECT lane, sha, MAX(allowed_at) AS at FROM allowances"
                                  " GROUP BY lane, sha"):
                allowed[(row["lane"], row["sha"])] = row["at"]
        found: list[RolledBack] = []
        seen: set[tuple[str, str]] = set()
        for row in rows:
            key = (row["lane"], row["sha"])
            if key in seen:
                continue
            seen.add(key)
            last_allowed = max(allowed.get(key, 0.0), allowed.get((ALL_LANES, row["sha"]), 0.0))
            if row["rolled_back_at"] > last_allowed:
                found.append(RolledBack(row["lane"], row["sha"], row["release"],
                                        row["rolled_back_at"], row["who"]))
        return found
