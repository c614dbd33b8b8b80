"""API throughput with a big database: POST /api/jobs per second, GET /api/jobs p50/p99.

For each backend (SQLite file, PostgreSQL database), this script:

1. creates an empty database and runs the migrations;
2. bulk-inserts ``--jobs`` jobs (default 100 000, two tasks each) for one user, directly;
3. starts ``buildworker api`` in a subprocess on a free 127.0.0.1 port, publishing to a
   RabbitMQ vhost of its own (deleted afterwards), so the outbox publisher runs as in
   production and no other queue sees the jobs;
4. measures, over real HTTP with one keep-alive client, a baseline (an unknown path: routing,
   auth-free JSON 404, no database), then POST /api/jobs, GET /api/jobs (first page) and
   GET /api/jobs?start=<middle> (a page deep in the list).

Timings are reported with their ratio to the baseline measured in the same run, so numbers
from different machines can be compared by shape. Nothing here asserts a timing.

Usage: .venv/bin/python bench/api.py [--jobs 100000] [--posts 500] [--gets 300]
                                      [--backends sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import psycopg
from sqlalchemy import insert

from buildworker.api.accounts import create_token, create_user
from buildworker.db.engine import make_engine, make_sessionmaker
from buildworker.db.migrate import upgrade
from buildworker.db.models import Job, Task, new_artifact_segment, utcnow

PG_ADMIN = os.environ.get("BUILDWORKER_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP = os.environ.get("BUILDWORKER_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672")
MANIFEST = "image: debian/bookworm\ntasks:\n  - build: make\n  - test: make check\n"
BATCH = 5000


@dataclass
class Result:
    backend: str
    baseline_p50_ms: float
    post_per_s: float
    post_p50_ms: float
    list_p50_ms: float
    list_p99_ms: float
    deep_p50_ms: float
    deep_p99_ms: float
    insert_s: float


# --- databases and the broker vhost ---------------------------------------------------------


@contextmanager
def sqlite_db(root: Path) -> Iterator[str]:
    yield f"sqlite:///{root / 'bench.db'}"


@contextmanager
def postgres_db() -> Iterator[str]:
    name = f"bw_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    netloc = urllib.parse.urlsplit(PG_ADMIN).netloc
    try:
        yield f"postgresql+psycopg://{netloc}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def vhost() -> Iterator[str]:
    name = f"bw-bench-{uuid.uuid4().hex[:10]}"
    ctl = ["rabbitmqctl", "-q"]
    subprocess.run([*ctl, "add_vhost", name], check=True, capture_output=True)
    subprocess.run(
        [*ctl, "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"{AMQP}/{urllib.parse.quote(name, safe='')}"
    finally:
        subprocess.run([*ctl, "delete_vhost", name], check=False, capture_output=True)


def populate(url: str, jobs: int) -> tuple[str, float]:
    """Migrate, create the user and a token, bulk-insert ``jobs`` finished jobs; return the
    token and the seconds the insert took."""
    upgrade(url)
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            user = create_user(session, "bench", "bench@example.org")
            token = create_token(session, user, "jobs:read jobs:write").token
            session.commit()
            owner = user.id
        started = time.perf_counter()
        base = utcnow() - timedelta(days=30)
        with engine.begin() as conn:
            for first in range(1, jobs + 1, BATCH):
                ids = range(first, min(first + BATCH, jobs + 1))
                conn.execute(
                    insert(Job),
                    [
                        {
                            "id": i,
                            "created": base + timedelta(seconds=i),
                            "updated": base + timedelta(seconds=i + 60),
                            "owner_id": owner,
                            "manifest": MANIFEST,
                            "note": f"bench job {i}",
                            "tags": ["bench"],
                            "image": "debian/bookworm",
                            "arch": "amd64",
                            "status": "success" if i % 10 else "failed",
                            "secrets": False,
                            "access_read": ["*"],
                            "access_write": [],
                            "runner": "bench-host",
                            "attempt": 1,
                            "cancel_requested": False,
                            "artifact_segment": new_artifact_segment(),
                        }
                        for i in ids
                    ],
                )
                conn.execute(
                    insert(Task),
                    [
                        {
                            "job_id": i,
                            "position": p,
                            "name": name,
                            "status": "success",
                            "updated": base,
                        }
                        for i in ids
                        for p, name in enumerate(("build", "test"))
                    ],
                )
            if engine.dialect.name == "postgresql":
                # Explicit ids were inserted: move the sequence past them, then ANALYZE.
                conn.exec_driver_sql(
                    "SELECT setval(pg_get_serial_sequence('jobs', 'id'), (SELECT max(id) FROM jobs))"
                )
        # Statistics and (on PostgreSQL) the visibility map, as autovacuum would leave them
        # on a database that has been running for a while: index-only scans become possible.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(
                "VACUUM ANALYZE" if engine.dialect.name == "postgresql" else "ANALYZE"
            )
        return token, time.perf_counter() - started
    finally:
        engine.dispose()


# --- the API under test ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def api_process(db_url: str, amqp_url: str, root: Path) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    store = root / "store"
    store.mkdir(exist_ok=True)
    config = root / "bench.conf"
    config.write_text(
        f"[api]\norigin = {url}\nbind = 127.0.0.1:{port}\nworker-token = bench\n"
        "images = debian/bookworm@amd64\n"
        f"[database]\nurl = {db_url}\n[store]\npath = {store}\n"
        f"[broker]\nurl = {amqp_url}\n[log]\nlevel = warning\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "buildworker.cli", "--config", str(config), "api"],
        stdout=subprocess.DEVNULL,
        stderr=(root / "api.log").open("wb"),
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/api/openapi.json", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the API did not start; see {root / 'api.log'}:\n"
                        + (root / "api.log").read_text()[-2000:]
                    ) from None
                time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def timed(n: int, call: Callable[[], httpx.Response], expect: int) -> list[float]:
    """Seconds per call, for n calls (after 10 warm-up calls)."""
    for _ in range(10):
        call()
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        response = call()
        samples.append(time.perf_counter() - started)
        if response.status_code != expect:
            raise RuntimeError(
                f"{response.request.url}: {response.status_code} {response.text[:200]}"
            )
    return samples


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def measure(backend: str, jobs: int, posts: int, gets: int) -> Result:
    with tempfile.TemporaryDirectory(prefix="bw-bench-") as tmp:
        root = Path(tmp)
        database = sqlite_db(root) if backend == "sqlite" else postgres_db()
        with database as db_url, vhost() as amqp_url:
            print(f"[{backend}] inserting {jobs} jobs ...", file=sys.stderr, flush=True)
            token, insert_s = populate(db_url, jobs)
            with api_process(db_url, amqp_url, root) as url:
                headers = {"Authorization": f"token {token}"}
                with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
                    print(f"[{backend}] measuring ...", file=sys.stderr, flush=True)
                    baseline = timed(gets, lambda: client.get("/api/no-such-path"), 404)
                    post = timed(
                        posts, lambda: client.post("/api/jobs", json={"manifest": MANIFEST}), 200
                    )
                    listing = timed(gets, lambda: client.get("/api/jobs"), 200)
                    middle = jobs // 2
                    deep = timed(gets, lambda: client.get(f"/api/jobs?start={middle}"), 200)
                    assert client.get("/api/jobs").json()["total"] >= jobs
    return Result(
        backend=backend,
        baseline_p50_ms=pct(baseline, 0.5),
        post_per_s=len(post) / sum(post),
        post_p50_ms=pct(post, 0.5),
        list_p50_ms=pct(listing, 0.5),
        list_p99_ms=pct(listing, 0.99),
        deep_p50_ms=pct(deep, 0.5),
        deep_p99_ms=pct(deep, 0.99),
        insert_s=insert_s,
    )


def report(results: list[Result], jobs: int) -> None:
    print(f"\nbuildworker API, {jobs} jobs in the database, one keep-alive client on loopback")
    print("(x = ratio to the baseline p50 of the same backend: a JSON 404 with no database)\n")
    names = [r.backend for r in results]
    rows: list[tuple[str, list[str]]] = [
        ("bulk insert (s)", [f"{r.insert_s:.1f}" for r in results]),
        ("baseline p50 (ms)", [f"{r.baseline_p50_ms:.2f}" for r in results]),
        ("POST /api/jobs (jobs/s)", [f"{r.post_per_s:.0f}" for r in results]),
        (
            "POST /api/jobs p50 (ms)",
            [f"{r.post_p50_ms:.2f} ({r.post_p50_ms / r.baseline_p50_ms:.1f}x)" for r in results],
        ),
        (
            "GET /api/jobs p50 (ms)",
            [f"{r.list_p50_ms:.2f} ({r.list_p50_ms / r.baseline_p50_ms:.1f}x)" for r in results],
        ),
        (
            "GET /api/jobs p99 (ms)",
            [f"{r.list_p99_ms:.2f} ({r.list_p99_ms / r.baseline_p50_ms:.1f}x)" for r in results],
        ),
        (
            "GET ?start=mid p50 (ms)",
            [f"{r.deep_p50_ms:.2f} ({r.deep_p50_ms / r.baseline_p50_ms:.1f}x)" for r in results],
        ),
        (
            "GET ?start=mid p99 (ms)",
            [f"{r.deep_p99_ms:.2f} ({r.deep_p99_ms / r.baseline_p50_ms:.1f}x)" for r in results],
        ),
    ]
    width = max(len(label) for label, _ in rows)
    print(f"{'':{width}}  " + "  ".join(f"{n:>20}" for n in names))
    for label, cells in rows:
        print(f"{label:{width}}  " + "  ".join(f"{c:>20}" for c in cells))
    if len(results) == 2:
        a, b = results
        print(
            f"\n{b.backend}/{a.backend}: POST rate {b.post_per_s / a.post_per_s:.2f}x, "
            f"GET p50 {b.list_p50_ms / a.list_p50_ms:.2f}x, "
            f"GET p99 {b.list_p99_ms / a.list_p99_ms:.2f}x"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--posts", type=int, default=500)
    parser.add_argument("--gets", type=int, default=300)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    results = [
        measure(backend.strip(), args.jobs, args.posts, args.gets)
        for backend in args.backends.split(",")
    ]
    report(results, args.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
