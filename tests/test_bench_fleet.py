"""The fleet simulator (benchmarks/bench_fleet.py) is correct: what its nodes send is
what the hub stores and acks, and its bookkeeping helpers settle acks and states as a
node and the hub do."""
from __future__ import annotations

import collections
import random
from pathlib import Path

import pytest

from benchmarks.bench_fleet import (TAP_SHAPE, FleetParams, cpu_percent, mean_tap_batches,
                                    mean_tap_events, node_name, run_side, sample_indices,
                                    settle_acks, settle_states, tap_batches, window_lags)
from tapcast.protocol.mqtt import ID_RE


def test_sample_indices_spread_over_the_fleet() -> None:
    assert sample_indices(10, 20) == list(range(10))
    assert sample_indices(10, 0) == []
    picked = sample_indices(10_000, 500)
    assert len(picked) == 500
    assert picked[0] == 0 and picked[-1] >= 9_900
    assert all(b - a == 20 for a, b in zip(picked, picked[1:]))


def test_node_names_are_valid_node_ids() -> None:
    assert ID_RE.fullmatch(node_name(0)) and ID_RE.fullmatch(node_name(99_999))
    assert node_name(7) != node_name(70)


def test_a_tap_sends_the_node_shaped_batches() -> None:
    rng = random.Random(3)
    taps = [tap_batches(rng) for _ in range(4000)]
    assert all(t[0] == (0.0, ("tap", "auth")) and t[1][1] == ("delivery",) for t in taps)
    # the optional request batch comes with its probability (0.5): about half the taps
    with_request = sum(len(t) == 3 for t in taps) / len(taps)
    assert 0.45 < with_request < 0.55
    assert mean_tap_events() == pytest.approx(4.0)
    assert mean_tap_batches() == pytest.approx(2.5)
    assert [d for d, _, _ in TAP_SHAPE] == sorted(d for d, _, _ in TAP_SHAPE)


def test_an_ack_settles_every_batch_it_covers_and_no_other() -> None:
    pending = collections.deque([(2, 10.0, True), (3, 10.5, False), (7, 11.0, True)])
    assert settle_acks(pending, 1, 12.0) == []
    assert settle_acks(pending, 3, 12.0) == [(2.0, True), (1.5, False)]
    assert list(pending) == [(7, 11.0, True)]
    assert settle_acks(pending, 3, 13.0) == []  # a duplicate ack settles nothing more
    assert settle_acks(pending, 9, 13.0) == [(2.0, True)]
    assert not pending


def test_a_stored_state_settles_every_state_published_before_it() -> None:
    pending = collections.deque([100.0, 130.0, 160.0])
    assert settle_states(pending, 99.0, 200.0) == []
    # the hub holds the 130 state: the 100 one was either stored or replaced by it
    assert settle_states(pending, 130.0, 131.0) == [(100.0, 131.0), (130.0, 131.0)]
    assert list(pending) == [160.0]


def test_window_lags_keep_states_published_in_the_window() -> None:
    pairs = [(9.0, 9.5), (10.0, 10.2), (15.0, 16.0), (20.5, 20.6)]
    assert window_lags(pairs, 10.0, 20.0) == pytest.approx([0.2, 1.0])


def test_cpu_percent() -> None:
    assert cpu_percent((1.0, 100.0), (2.5, 103.0)) == pytest.approx(50.0)
    assert cpu_percent((1.0, 100.0), (1.0, 100.0)) == 0.0


@pytest.mark.slow
def test_every_state_and_batch_of_a_small_fleet_reaches_the_hub(tmp_path: Path) -> None:
    """20 simulated nodes against a real Mosquitto and a real `tapcast hub ingest` on
    SQLite: every node's state is in the hub's database, every batch sent was acked
    with an authentic ack, and the database holds exactly the events sent."""
    params = FleetParams(nodes=20, duration=3.0, heartbeat=1.0, tap_interval=0.5,
                         connect_rate=200.0, sample_nodes=20, poll=0.05, drain=15.0)
    run = run_side("product", params, tmp_path)
    counts, extra = run.counts, run.extra
    assert counts["connected_at_start"] == 20
    assert counts["connect_failures"] == counts["lost_connections"] == 0
    assert counts["taps"] > 20 and counts["batches"] > counts["taps"]
    # every batch acked by the hub (authentic, this epoch), none left over
    assert counts["acked_batches"] == counts["batches"]
    assert extra["unacked_at_end"] == 0
    assert counts["forged_acks"] == counts["refused_acks"] == 0
    assert len(run.ack_latencies) == counts["window_batches"]
    # every state published reached the hub's database (all 20 nodes sampled)
    assert extra["states_unseen_at_end"] == 0
    assert len(run.status_lags) == counts["window_states"] >= 40
    assert all(lag >= 0 for lag in run.status_lags)
    final = extra["hub_final"]
    assert final["nodes"] == final["nodes_with_state"] == 20
    assert final["events"] in (counts["events"], None)  # None: the events table was renamed
    assert run.rss_max["hub"] > 0 and "ingest-0" in run.cpu
