"""The virtual hall: N nodes and M handsets on simulated NFC and BLE links.

Shared by the demo, the end-to-end tests and the benchmarks, so all three exercise the
same wiring. Everything is the real stack: each node is a NodeDaemon reading nfcpy's
udp driver on its own port and pushing through bleak's BleakClient with the bumble
backend; each handset emulates its card with nfcpy and serves GATT with bumble.

Processes, as on real hardware: this process hosts the virtual BLE air (hall.air) and
the crowd of handsets; each node is its own ``tapcast node run --config node.toml``
process attached to its controller of the air by a transport string, so a node can be
killed mid-tap and restarted like a Pi losing power. ``processes=False`` runs the
daemons in this process instead (fast unit-level end-to-end tests that read a daemon's
counters or outbox directly).

Provisioning is done as on real hardware: a hub authority signs a certificate for each
node and handset, node key files and a node.toml are written per node.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from node.config import NodeConfig
from tapcast import config as cfg
from tapcast.keys import HubAuthority, make_handset_credentials, write_node_credentials
from tapcast.streamkeys import (STREAM_SECRET_FILE, load_stream_secret, write_node_stream_key,
                                write_stream_secret)

if TYPE_CHECKING:  # the hall wires the parts together; it imports them only when it runs
    from handset_app.sim import SimulatedHandset, TapReport
    from node.daemon import NodeDaemon, TapRecord
    from hall.air import VirtualAir

log = logging.getLogger(__name__)

ZONES = ("lobby", "food-court", "platform")
LIBRARY = Path(__file__).resolve().parents[1] / "content" / "library.toml"
CERT_LIFETIME = 30 * 24 * 3600.0
#: What `tapcast node run` prints once it serves taps (the hall waits for it).
READY_PREFIX = "node "
NODE_START_TIMEOUT = 30.0


#: Where the hall's NFC ports come from when the kernel's ephemeral range starts above it.
NFC_PORTS_FROM = 20000


def free_nfc_port(taken: Collection[int] = ()) -> int:
    """A free UDP port for a virtual NFC reader, outside the kernel's ephemeral range.

    Why: with nfcpy's udp driver a tap is the handset binding the node's port, and every
    reader re-creates its socket each poll cycle (about 40 ms), taking a fresh ephemeral
    port. A node port picked from the ephemeral range is sooner or later held for a poll
    cycle by another node's reader, and the handset's bind fails: in the demo's load
    about one tap in a thousand ended "no session" that way. Falls back to any free port
    when the ephemeral range leaves no room below it."""
    rng = random.Random()
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200) if low - NFC_PORTS_FROM > 1000 else ():
        port = rng.randrange(NFC_PORTS_FROM, low)
        if port in taken:  # free now, but given to another node of the same hall
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("0.0.0.0", port))  # where nfcpy's card side binds
            except OSError:
                continue
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


class NodeProcessError(RuntimeError):
    """A node process did not come up; the message carries its last output lines."""


@dataclass
class HallNode:
    node_id: str
    zone: str
    nfc_device: str
    ble_adapter: str
    config_path: Path
    lock: asyncio.Lock  # one phone on a reader at a time, as people queue at a display
    daemon: NodeDaemon | None = None  # processes=False
    proc: asyncio.subprocess.Process | None = None  # processes=True
    log_path: Path | None = None
    started_in: float = 0.0  # seconds from spawn to serving taps
    free_at: float = 0.0  # time.monotonic() when the reader polls again after a tap
    _log: IO[str] | None = field(default=None, repr=False)
    _pump: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def outbox_path(self) -> Path:
        return self.config_path.parent / "data" / "outbox.db"


class VirtualHall:
    def __init__(self, workdir: Path, broker_url: str, *, nodes: int = 3, handsets: int = 5,
                 library: Path = LIBRARY, seed: int | None = None, hold_off: float = 0.2,
                 processes: bool = True, node_verbosity: int = 0,
                 stream_secret: bytes | None = None,
                 authority: HubAuthority | None = None,
                 on_tap: Callable[[TapRecord], None] | None = None) -> None:
        if nodes < 1 or handsets < 1:
            raise ValueError("a hall needs at least one node and one handset")
        if on_tap is not None and processes:
            raise ValueError("on_tap sees node-side records only with processes=False")
        self.workdir = Path(workdir)
        self.broker_url = broker_url
        self.node_count = nodes
        self.handset_count = handsets
        self.library = library
        self.rng = random.Random(seed)
        self.hold_off = hold_off
        self.processes = processes
        self.node_verbosity = node_verbosity  # -v flags for node processes (their logs)
        self.on_tap = on_tap
        # The hub's signing key: the hub that serves this hall (its manifests) needs the
        # same one (hub.toml [hub] signing_key = hub-authority/hub.key, written by start()).
        self.authority = authority or HubAuthority.generate()
        # The hub's event-stream secret: the hub that ingests this hall's events needs
        # the same one (hub.toml [hub] stream_secret = the file start() writes).
        self.stream_secret = stream_secret or secrets.token_bytes(32)
        self.nodes: list[HallNode] = []
        self.handsets: list[SimulatedHandset] = []
        self.air: VirtualAir | None = None

    @property
    def stream_secret_path(self) -> Path:
        """The hall's hub stream secret file, for the hub that ingests its events."""
        return self.workdir / "hub-authority" / STREAM_SECRET_FILE

    def node_config(self, node_id: str, zone: str, nfc_device: str, ble_adapter: str) -> NodeConfig:
        from hall.testing.mosquitto import free_port

        display_port = free_port()
        return cfg.load(NodeConfig, data={
            "node": {"id": node_id, "zone": zone, "data_dir": "data",
                     "library": str(self.library)},
            "nfc": {"device": nfc_device, "hold_off": self.hold_off},
            "ble": {"adapter": ble_adapter},
            "mqtt": {"brokers": [self.broker_url]},
            # every node of the hall on this machine: each display on a port of its own,
            # and its WLAN links on loopback, where the hall's simulated phones are
            "display": {"port": display_port, "public_url": f"http://127.0.0.1:{display_port}"},
        }, environ={})

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        from handset_app.sim import SimulatedHandset
        from hall.air import VirtualAir

        self.authority.save(self.workdir / "hub-authority")
        if not self.stream_secret_path.exists():
            write_stream_secret(self.workdir / "hub-authority", self.stream_secret)
        elif load_stream_secret(self.stream_secret_path) != self.stream_secret:
            raise ValueError(f"{self.stream_secret_path} holds another stream secret than "
                             "this hall's: its hub would refuse every node's events; use a "
                             "new workdir or pass stream_secret= from that file")
        self.air = VirtualAir()
        expires = time.time() + CERT_LIFETIME
        for i in range(self.node_count):
            node_id, zone = f"node-{i + 1}", ZONES[i % len(ZONES)]
            node_dir = self.workdir / "nodes" / node_id
            taken = {int(n.nfc_device.rsplit(":", 1)[1]) for n in self.nodes}
            nfc_device = f"udp:127.0.0.1:{free_nfc_port(taken)}"
            adapter = await self.air.serve(node_id)
            conf = self.node_config(node_id, zone, nfc_device, adapter)
            write_node_credentials(node_dir, self.authority, node_id, zone, expires, conf.keys)
            write_node_stream_key(node_dir, self.stream_secret, node_id, conf.keys.stream_key)
            config_path = node_dir / "node.toml"
            config_path.write_text(cfg.dump(conf))
            self.nodes.append(HallNode(node_id, zone, nfc_device, adapter, config_path,
                                       asyncio.Lock()))
        await asyncio.gather(*(self.start_node(node) for node in self.nodes))
        for j in range(self.handset_count):
            creds = make_handset_credentials(self.authority, f"handset-{j + 1}", expires)
            handset = SimulatedHandset(creds, self.air.local_adapter(creds.handset_id),
                                       rng=random.Random(self.rng.random()))
            await handset.start()
            self.handsets.append(handset)

    async def start_node(self, node: HallNode) -> None:
        """Start (or restart) one node: its own process, or a daemon in this one."""
        started = time.monotonic()
        if not self.processes:
            from node.daemon import NodeDaemon

            conf = cfg.load(NodeConfig, node.config_path, environ={})
            node.daemon = NodeDaemon(conf, base_dir=node.config_path.parent, on_tap=self.on_tap)
            await node.daemon.start()
        else:
            await self._spawn(node)
        node.started_in = time.monotonic() - started

    async def _spawn(self, node: HallNode) -> None:
        node.log_path = node.config_path.parent / "node.log"
        node._log = node.log_path.open("a", encoding="utf-8")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        node.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hall.cli", *(["-" + "v" * self.node_verbosity]
                                                 if self.node_verbosity else []),
            "node", "run", "--config", str(node.config_path),
            stdout=asyncio.subprocess.PIPE, stderr=node._log, env=env)
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        node._pump = asyncio.create_task(self._pump_output(node, ready))
        try:
            await asyncio.wait_for(ready, NODE_START_TIMEOUT)
        except (TimeoutError, NodeProcessError) as exc:
            await self.kill_node(node)
            tail = _tail(node.log_path)
            raise NodeProcessError(f"node {node.node_id} did not start: {exc or 'timeout'}"
                                   f"; its log {node.log_path} ends:\n{tail}") from None

    @staticmethod
    async def _pump_output(node: HallNode, ready: asyncio.Future[str]) -> None:
        """Copy the node's stdout to its log; resolve ``ready`` at its ready line."""
        assert node.proc is not None and node.proc.stdout is not None and node._log is not None
        async for raw in node.proc.stdout:
            line = raw.decode(errors="replace")
            node._log.write(line)
            node._log.flush()
            if not ready.done() and line.startswith(READY_PREFIX):
                ready.set_result(line.strip())
        if not ready.done():
            ready.set_exception(NodeProcessError(
                f"process exited with code {await node.proc.wait()}"))

    async def kill_node(self, node: HallNode) -> None:
        """SIGKILL the node's process, as pulling a Pi's plug does: nothing is flushed."""
        if node.proc is None:
            raise RuntimeError("kill_node needs processes=True")
        with contextlib.suppress(ProcessLookupError):
            node.proc.kill()
        await self._reap(node)

    async def stop_node(self, node: HallNode, timeout: float = 10.0) -> None:
        """Stop one node cleanly (SIGTERM: it says offline and closes its outbox)."""
        if node.daemon is not None:
            await node.daemon.stop()
            node.daemon = None
        if node.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            node.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(node.proc.wait(), timeout)
        except TimeoutError:
            log.warning("node %s did not stop within %.0f s; killing it", node.node_id, timeout)
            with contextlib.suppress(ProcessLookupError):
                node.proc.kill()
        await self._reap(node)

    @staticmethod
    async def _reap(node: HallNode) -> None:
        if node.proc is not None:
            await node.proc.wait()
        if node._pump is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(node._pump, 5)
        if node._log is not None:
            node._log.close()
        node.proc, node._pump, node._log = None, None, None

    async def stop(self) -> None:
        for handset in self.handsets:
            await handset.close()
        await asyncio.gather(*(self.stop_node(node) for node in self.nodes),
                             return_exceptions=True)
        if self.air is not None:
            await self.air.close()

    # -------------------------------------------------------------------- taps

    async def tap(self, handset: SimulatedHandset, node: HallNode, **kwargs: Any) -> TapReport:
        """``handset`` taps ``node``'s display, waiting its turn: one phone at a reader at
        a time, and the next one no sooner than the reader's hold-off after the last
        (people take longer than that to swap phones; a reader in its hold-off would
        count as latency that no real customer sees)."""
        async with node.lock:
            wait = node.free_at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # the queue moves at people's pace
            try:
                return await handset.tap(node.nfc_device, **kwargs)
            finally:
                node.free_at = time.monotonic() + self.hold_off

    def outbox_depth(self) -> int:
        """Events recorded by the nodes that the hub has not acked yet."""
        from node.outbox import outbox_depth

        return sum(outbox_depth(node.outbox_path) for node in self.nodes)

    async def drain(self, timeout: float) -> bool:
        """Wait until every node has finished the taps it saw and the hub acked its
        whole outbox; False on timeout."""
        if not self.processes:
            async def settle(node: HallNode) -> None:
                assert node.daemon is not None
                await node.daemon.wait_idle()
                await node.daemon.uplink.wait_drained()

            try:
                await asyncio.wait_for(asyncio.gather(*(settle(n) for n in self.nodes)), timeout)
                return True
            except TimeoutError:
                return False
        # Separate processes: their outbox files are the truth. A tap's events are all
        # recorded before the node's bye reaches the handset, so once the handsets are
        # done an empty outbox everywhere means everything reached the hub.
        deadline = time.monotonic() + timeout
        while True:
            depth = await asyncio.to_thread(self.outbox_depth)
            if depth == 0:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)  # polling a file another process writes


def _tail(path: Path | None, lines: int = 8) -> str:
    if path is None or not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
