"""The views benchmark measures what it says: a database filled to the asked size, and
every call of the operator page and API answered (200) by a real `hub web`."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import bench_views
from hub.db import HubDB
from hub.migrate import upgrade


def test_seeding_fills_nodes_events_and_the_maintained_totals(tmp_path: Path) -> None:
    database = str(tmp_path / "hub.db")
    upgrade(database, echo=print)
    bench_views.seed(database, nodes=30, events=3_001, now=1_800_000_000.0)
    with HubDB(database) as db:
        assert db.node_totals(stale_after=120, now=1_800_000_000.0) == {
            "total": 30, "online": 28, "offline": 2}
        assert db.count_events() == 3_001 == db.event_totals()["total"]
        assert db.query("SELECT count(*) AS n FROM events") == [{"n": 3_001}]
        assert db.acked_seq("node-00000") == 101 and db.acked_seq("node-00029") == 100
        assert [e["kind"] for e in db.list_events(kind="error")[0]] == ["error"]


@pytest.mark.slow
def test_every_call_is_timed_against_a_real_hub_web(tmp_path: Path) -> None:
    results = bench_views.measure(str(tmp_path / "hub.db"), nodes=50, events=2_000,
                                  requests=3, workdir=tmp_path)
    assert len(results) == len(bench_views.calls(50, 2_000, 0.0))
    assert all(r.value > 0 and r.floor and r.extra["n"] == 3 for r in results)
