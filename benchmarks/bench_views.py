"""Operator views with a big fleet: every page and API call against a hub database of
10,000 nodes and 10 million events, on SQLite and on PostgreSQL.

    .venv/bin/python -m benchmarks.bench_views                     # SQLite, 10k / 10M
    .venv/bin/python -m benchmarks.bench_views --database postgresql
    .venv/bin/python -m benchmarks.bench_views --quick             # 1k nodes, 200k events

The database is filled by the database itself (a recursive CTE on SQLite,
generate_series on PostgreSQL): nodes in 50 zones and 4 versions, 5% offline, events
spread over the nodes with a rare kind (``error``, 1 in 10,000), and the maintained
totals and streams the ingest would have written. Then a real ``tapcast hub web``
(gunicorn, 2 workers) answers each call ``--requests`` (300) times in turn on one kept-alive
connection; p50/p99 per call with a bootstrap interval. The floor is the same server
answering ``/static/hub.css`` (Flask's static route: no database, no credential, a
small file): the HTTP, WSGI and Flask cost every call pays. Target (issue 7): every
call's p99 under 300 ms.
"""
from __future__ import annotations

import argparse
import http.client
import json
import tempfile
import time
from pathlib import Path

from benchmarks.common import Progress, Result, percentile, run_and_report, sample_stats

NODES = 10_000
EVENTS = 10_000_000
CHUNK = 500_000
ZONES = 50
VERSIONS = 4
#: One event in this many is the rare kind.
RARE = 10_000
TARGET = "p99 < 300 ms"


def node_name(i: int) -> str:
    return f"node-{i:05d}"


# The seeding SQL, per dialect: :lo/:hi bound the chunk of event numbers g; event g is
# node g % :nodes's seq g // :nodes + 1, stored at hub time :t0 + g / 1000.
_EVENTS_SQLITE = """
WITH RECURSIVE g(x) AS (SELECT :lo UNION ALL SELECT x + 1 FROM g WHERE x + 1 < :hi)
INSERT INTO events (node_id, epoch, seq, id, kind, ts, data, received)
SELECT printf('node-%05d', x % :nodes), 'e1', x / :nodes + 1, printf('ev%d', x),
       CASE WHEN x % :rare = 7 THEN 'error' WHEN x % 5 < 2 THEN 'tap'
            WHEN x % 5 < 4 THEN 'auth' ELSE 'delivery' END,
       :t0 + x / 1000.0, :data, :t0 + x / 1000.0
FROM g
"""
_EVENTS_PG = """
INSERT INTO events (node_id, epoch, seq, id, kind, ts, data, received)
SELECT 'node-' || lpad((x % :nodes)::text, 5, '0'), 'e1', x / :nodes + 1, 'ev' || x,
       CASE WHEN x % :rare = 7 THEN 'error' WHEN x % 5 < 2 THEN 'tap'
            WHEN x % 5 < 4 THEN 'auth' ELSE 'delivery' END,
       :t0 + x / 1000.0, :data, :t0 + x / 1000.0
FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint) - 1) AS x
"""


def seed(database: str, nodes: int, events: int, now: float) -> float:
    """Fill a migrated hub database; returns t0, the hub time of the first event."""
    from sqlalchemy import text

    from hub.dbengine import make_engine

    engine = make_engine(database)
    t0 = now - events / 1000.0 - 60.0
    node_rows = []
    for i in range(nodes):
        state = {"node_id": node_name(i), "ts": now, "version": f"v{i % VERSIONS}",
                 "zone": f"zone-{i % ZONES:02d}", "uptime": 1.0, "outbox_depth": 0}
        offline = i % 20 == 0
        node_rows.append({"node_id": node_name(i), "status": "offline" if offline else "online",
                          "status_at": now, "last_seen": now - 600 if offline else now - i % 60,
                          "state": json.dumps(state), "zone": state["zone"],
                          "version": state["version"], "epoch": "e1",
                          "acked_seq": events // nodes + (1 if i < events % nodes else 0)})
    sql = _EVENTS_PG if engine.dialect.name == "postgresql" else _EVENTS_SQLITE
    progress = Progress(f"seeding {events:,} events", events)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO nodes (node_id, status, status_at, last_seen, state, "
                          "zone, version, epoch, acked_seq) VALUES (:node_id, :status, "
                          ":status_at, :last_seen, :state, :zone, :version, :epoch, "
                          ":acked_seq)"), node_rows)
        conn.execute(text("INSERT INTO streams (node_id, epoch, acked_seq, lost, high, "
                          "first_seen) VALUES (:node_id, 'e1', :acked_seq, 0, :acked_seq, "
                          ":first)"), [{**r, "first": t0} for r in node_rows])
    for lo in range(0, events, CHUNK):
        hi = min(events, lo + CHUNK)
        with engine.begin() as conn:
            conn.execute(text(sql), {"lo": lo, "hi": hi, "nodes": nodes, "rare": RARE,
                                     "t0": t0, "data": '{"ok":true}'})
        progress.step(hi - lo)
    progress.close()
    with engine.begin() as conn:  # the totals the ingest maintains as it writes
        conn.execute(text("INSERT INTO event_counts (node_id, kind, n, ok) SELECT node_id, "
                          "kind, count(*), sum(CASE WHEN kind = 'auth' THEN 1 ELSE 0 END) "
                          "FROM events GROUP BY node_id, kind"))
        # all in shard 0: readers sum the shards, any spread will do
        conn.execute(text("INSERT INTO kind_totals (shard, kind, n, ok) SELECT 0, kind, "
                          "sum(n), sum(ok) FROM event_counts GROUP BY kind"))
        conn.execute(text("ANALYZE"))  # fresh statistics, as a live database has
    engine.dispose()
    return t0


def calls(nodes: int, events: int, t0: float) -> list[tuple[str, str]]:
    """(label, path) of every call the operator page and API make, at the awkward
    places: deep pages, a rare kind, a filter matching few nodes, a time window."""
    from hub.db import encode_cursor, encode_key_cursor

    middle = node_name(nodes // 2)
    mid_t = t0 + events / 2000.0
    return [
        ("nodes, first page", "/api/v1/nodes?limit=50"),
        ("nodes, page in the middle",
         f"/api/v1/nodes?limit=50&cursor={encode_key_cursor('nodes', middle)}"),
        ("nodes in one zone", "/api/v1/nodes?zone=zone-07"),
        ("nodes offline", "/api/v1/nodes?status=offline"),
        ("nodes, zone + version + online",
         "/api/v1/nodes?zone=zone-07&version=v3&status=online"),
        ("one node", f"/api/v1/nodes/{middle}"),
        ("events, newest page", "/api/v1/events?limit=50"),
        ("events, page in the middle",
         f"/api/v1/events?limit=50&cursor={encode_cursor('all', events // 2)}"),
        ("events of a rare kind", "/api/v1/events?kind=error"),
        ("events of one node", f"/api/v1/events?node_id={middle}"),
        ("events in a minute, mid-table",
         f"/api/v1/events?since={mid_t:.3f}&until={mid_t + 60:.3f}"),
        ("incidents", "/api/v1/incidents"),
        ("stats", "/api/v1/stats"),
        ("operator page", "/"),
    ]


FLOOR = ("floor: /static/hub.css", "/static/hub.css")


def time_calls(base: str, token: str, todo: list[tuple[str, str]], requests: int
               ) -> dict[str, list[float]]:
    """Each call ``requests`` times, in turn, on one kept-alive connection (seconds)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    headers = {"Authorization": f"Bearer {token}"}
    samples: dict[str, list[float]] = {label: [] for label, _ in todo}
    progress = Progress("timing calls", requests * len(todo))
    for _, path in todo:  # warm up: imports, statement caches, the database's pages
        conn.request("GET", path, headers=headers)
        conn.getresponse().read()
    for _ in range(requests):
        for label, path in todo:
            start = time.perf_counter()
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            body = response.read()
            samples[label].append(time.perf_counter() - start)
            if response.status != 200:
                raise RuntimeError(f"{path}: HTTP {response.status}: {body[:200]!r}")
            progress.step()
    progress.close()
    conn.close()
    return samples


def measure(database: str, nodes: int, events: int, requests: int,
            workdir: Path) -> list[Result]:
    from hall.testing.hub import HubProcess, api_token, hub_config
    from tapcast import config as cfg

    config = hub_config(database, "mqtt://127.0.0.1:1", secret_dir=workdir, workers=2)
    t0 = seed(database, nodes, events, time.time())
    token = api_token(config, "bench-views")
    config_path = workdir / "hub.toml"
    config_path.write_text(cfg.dump(config))
    with HubProcess("web", config_path) as web:
        line = web.wait_line("hub web", timeout=60)
        base = line[line.index("http://"):].split()[0].rstrip(".,)")
        todo = calls(nodes, events, t0)
        samples = time_calls(base, token, [FLOOR, *todo], requests)
    floor = samples.pop(FLOOR[0])
    kind = "PostgreSQL" if "://" in database else "SQLite"
    out = []
    for label, values in samples.items():
        out.append(Result(f"{kind}, {nodes:,} nodes / {events:,} events: {label} p99", "ms",
                          percentile(values, 99) * 1000, percentile(floor, 99) * 1000,
                          TARGET, {**sample_stats(values, 99, scale=1000),
                                   **sample_stats(floor, 99, scale=1000, prefix="floor_"),
                                   "p50_ms": percentile(values, 50) * 1000}))
    return out


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default="sqlite",
                        help="sqlite (a new file), postgresql (a new database on the test "
                             "server, dropped afterwards), or a URL/path to fill")
    parser.add_argument("--nodes", type=int, default=NODES)
    parser.add_argument("--events", type=int, default=EVENTS)
    parser.add_argument("--requests", type=int, default=300,
                        help="per call (with 100, a p99 is nearly the maximum and a quiet "
                        "call can tie with the floor by chance)")
    parser.add_argument("--quick", action="store_true", help="1,000 nodes, 200,000 events")
    args = parser.parse_args(argv)
    if args.quick:
        args.nodes, args.events, args.requests = 1_000, 200_000, 30

    def run() -> list[Result]:
        with tempfile.TemporaryDirectory(prefix="bench-views-") as tmp:
            workdir = Path(tmp)
            if args.database == "postgresql":
                from hall.testing.postgres import PostgresServer

                server = PostgresServer(prefix="tapcast_bench")
                try:
                    return measure(server.create("views"), args.nodes, args.events,
                                   args.requests, workdir)
                finally:
                    server.close()
            database = str(workdir / "hub.db") if args.database == "sqlite" else args.database
            return measure(database, args.nodes, args.events, args.requests, workdir)

    return run_and_report(run, render)


def render(results: list[Result]) -> str:
    worst = max(results, key=lambda r: r.value)
    met = all(r.value < 300 for r in results)
    return (f"slowest call: {worst.name} {worst.value:.1f} ms; every call p99 < 300 ms: "
            f"{'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
