"""Cost of the API's /metrics with a big database: the database gauges uncached, cached, and
a baseline without them, measured in one process.

For each backend (SQLite file, PostgreSQL database) it fills ``--jobs`` finished jobs (the
same bulk insert as bench/api.py), then renders the metrics registry ``--scrapes`` times:

- baseline: an `ApiMetrics` without a database (process collector, counters, histograms);
- uncached: with the database gauges and ``cache_s=0`` (every scrape runs the three
  aggregate queries: jobs GROUP BY status, unsent outbox rows, deliveries GROUP BY);
- cached: with the default ``[api] metrics-cache`` (5 s): what a scrape storm costs.

Prints p50/p95 in ms and the ratios to the baseline. Nothing here asserts a timing.

Usage: .venv/bin/python bench/metrics.py [--jobs 100000] [--scrapes 200]
                                          [--backends sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import api as bench_api  # bench/api.py: the shared bulk insert

from buildworker.api.metrics import ApiMetrics
from buildworker.config import ApiConfig
from buildworker.db.engine import make_engine, make_sessionmaker


def timings(render: Callable[[], bytes], n: int) -> list[float]:
    render()  # warm: connections, imports
    out = []
    for _ in range(n):
        started = time.perf_counter()
        render()
        out.append((time.perf_counter() - started) * 1000)
    return out


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


def run(backend: str, url: str, jobs: int, scrapes: int) -> None:
    _token, insert_s = bench_api.populate(url, jobs)
    engine = make_engine(url)
    try:
        sessions = make_sessionmaker(engine)
        base = timings(ApiMetrics().render, scrapes)
        uncached = timings(ApiMetrics(sessions, cache_s=0).render, scrapes)
        cached = timings(ApiMetrics(sessions, cache_s=ApiConfig().metrics_cache).render, scrapes)
    finally:
        engine.dispose()
    b50 = p(base, 50)
    print(f"\n{backend}: {jobs} jobs (inserted in {insert_s:.1f} s), {scrapes} scrapes each")
    print(f"  {'':10} {'p50 ms':>8} {'p95 ms':>8} {'p50/baseline':>13}")
    for name, values in (("baseline", base), ("uncached", uncached), ("cached", cached)):
        print(f"  {name:10} {p(values, 50):8.2f} {p(values, 95):8.2f} {p(values, 50) / b50:13.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    for backend in args.backends.split(","):
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as tmp, bench_api.sqlite_db(Path(tmp)) as url:
                run(backend, url, args.jobs, args.scrapes)
        else:
            with bench_api.postgres_db() as url:
                run(backend, url, args.jobs, args.scrapes)


if __name__ == "__main__":
    main()
