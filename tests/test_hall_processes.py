"""Nodes of the virtual hall as their own processes (`tapcast node run --config`), on the
real stacks: nfcpy udp, bleak on a bumble controller of the hall's air reached over TCP,
real Mosquitto, the hub's ingest."""
from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest

from hall.virtual import VirtualHall
from node.outbox import Outbox

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


@pytest.fixture
async def hall(make_hall) -> VirtualHall:  # type: ignore[no-untyped-def]
    return await make_hall(seed=3, processes=True)


def hub_events(running_hub) -> list[dict]:  # type: ignore[no-untyped-def]
    from hub import get_db
    return [dict(row) for row in get_db(running_hub.app).query(
        "select node_id, seq, id, kind, data from events order by node_id, seq")]


async def test_a_hall_node_runs_as_its_own_process_and_serves_a_tap(
        hall: VirtualHall, running_hub) -> None:  # type: ignore[no-untyped-def]
    node = hall.nodes[0]
    assert node.proc is not None and node.proc.returncode is None
    assert hall.air is not None and hall.air.attached(node.node_id)
    report = await hall.tap(hall.handsets[0], node)
    assert report.ok, report.error
    assert report.node_id == node.node_id
    assert await hall.drain(10.0)
    kinds = [e["kind"] for e in hub_events(running_hub)]
    assert kinds[:2] == ["tap", "auth"] and "delivery" in kinds


async def test_a_node_killed_mid_push_and_restarted_loses_no_event_and_duplicates_none(
        hall: VirtualHall, running_hub) -> None:  # type: ignore[no-untyped-def]
    node, handset = hall.nodes[0], hall.handsets[0]
    killed = asyncio.Event()

    def kill_at_first_frame(index: int, total: int) -> None:
        if not killed.is_set():
            killed.set()
            asyncio.ensure_future(hall.kill_node(node))

    handset.peripheral.on_frame = kill_at_first_frame
    report = await hall.tap(handset, node, message_timeout=1.0)
    assert killed.is_set()
    assert not report.ok  # the push died with the node
    while node.proc is not None:  # the kill task reaps it
        await asyncio.sleep(0.01)
    handset.peripheral.on_frame = None

    await hall.start_node(node)
    again = await hall.tap(handset, node)
    assert again.ok, again.error
    assert await hall.drain(15.0)
    await hall.stop_node(node)

    with Outbox(node.outbox_path) as outbox:
        recorded = outbox.last_seq()
    events = [e for e in hub_events(running_hub) if e["node_id"] == node.node_id]
    seqs = sorted(e["seq"] for e in events)
    assert seqs == list(range(1, recorded + 1))  # every event once, none twice
    assert len({e["id"] for e in events}) == len(events)
    auths = [json.loads(e["data"]) for e in events if e["kind"] == "auth"]
    assert [a["ok"] for a in auths] == [True, True]


async def test_a_node_that_cannot_reach_its_ble_air_says_so_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    from hall.testing.mosquitto import free_port

    h = VirtualHall(tmp_path / "hall", "mqtt://127.0.0.1:1", nodes=1, handsets=1,
                    processes=True)
    from hall.air import VirtualAir  # provision a node whose air port nobody serves
    h.air = VirtualAir()
    conf_dir = tmp_path / "n"
    from tapcast import config as cfg
    from tapcast.keys import write_node_credentials
    conf = h.node_config("node-x", "lobby", f"udp:127.0.0.1:{free_port()}",
                         f"bumble:tcp-client:127.0.0.1:{free_port()}")
    write_node_credentials(conf_dir, h.authority, "node-x", "lobby", 2e9, conf.keys)
    from tapcast.streamkeys import write_node_stream_key
    write_node_stream_key(conf_dir, h.stream_secret, "node-x")
    (conf_dir / "node.toml").write_text(cfg.dump(conf))
    await h.air.close()
    result = subprocess.run([sys.executable, "-m", "hall.cli", "node", "run", "--config",
                             str(conf_dir / "node.toml")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "BLE adapter 'bumble:tcp-client:127.0.0.1:" in result.stderr
    assert "Check [ble] adapter" in result.stderr


def test_hall_nfc_ports_lie_outside_the_ephemeral_range_so_no_reader_socket_takes_one() -> None:
    """Each poll re-creates a reader's socket on a fresh ephemeral port; a node port in
    that range is sometimes held by another node's reader, and a handset's tap fails."""
    from hall.virtual import free_nfc_port

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    taken = {free_nfc_port() for _ in range(5)}
    port = free_nfc_port(taken)
    assert port < low
    assert port not in taken
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", port))
