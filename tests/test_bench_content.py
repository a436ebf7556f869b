"""The content benchmark measures what it says: every simulated node runs the changed
manifest (real Mosquitto, the hub's own publisher, the node's own sync), and an
unchanged file set is not fetched again."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import bench_content

pytestmark = pytest.mark.slow


async def test_a_changed_manifest_is_timed_until_every_node_runs_it(tmp_path: Path) -> None:
    reach, moved = await bench_content.measure_propagation(
        nodes=5, files=2, file_size=40_000, texts=2, workdir=tmp_path)
    assert reach.extra["nodes_reached"] == 5 and 0 < reach.value < 30
    assert reach.floor and reach.floor > 0
    # Only the manifests moved again (no file): a few KB against 5 x 80 KB.
    assert moved.extra["set_bytes"] == 5 * 2 * 40_000
    assert 0 < moved.extra["moved_bytes"] < 5 * 10_000
