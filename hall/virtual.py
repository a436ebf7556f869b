"""The virtual hall: N nodes and M handsets on simulated NFC and BLE links, one process.

Shared by the demo, the end-to-end tests and the benchmarks, so all three exercise the
same wiring. Everything is the real stack: each node is a NodeDaemon reading nfcpy's
udp driver on its own port and pushing through bleak's BleakClient with the bumble
backend; each handset emulates its card with nfcpy and serves GATT with bumble. All BLE
devices share one VirtualRadio, which bumble needs created inside the running loop, so
the hall is built and used inside one asyncio loop.

Provisioning is done as on real hardware: a hub authority signs a certificate for each
node and handset, node key files and a node.toml are written per node (so any node of a
hall can also be started alone with ``tapcast node run --config``).
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tapcast import config as cfg
from tapcast.keys import HubAuthority, make_handset_credentials, write_node_credentials
from hall.testing.mosquitto import free_port

from node.config import NodeConfig

if TYPE_CHECKING:  # the hall wires the parts together; it imports them only when it runs
    from handset_app.sim import SimulatedHandset, TapReport
    from node.daemon import NodeDaemon, TapRecord
    from hall.air import VirtualAir

log = logging.getLogger(__name__)

ZONES = ("lobby", "food-court", "platform")
LIBRARY = Path(__file__).resolve().parents[1] / "content" / "library.toml"
CERT_LIFETIME = 30 * 24 * 3600.0


@dataclass
class HallNode:
    node_id: str
    zone: str
    nfc_device: str
    config_path: Path
    daemon: NodeDaemon
    lock: asyncio.Lock  # one phone on a reader at a time, as people queue at a display


class VirtualHall:
    def __init__(self, workdir: Path, broker_url: str, *, nodes: int = 3, handsets: int = 5,
                 library: Path = LIBRARY, seed: int | None = None,
                 hold_off: float = 0.2, on_tap: Callable[[TapRecord], None] | None = None) -> None:
        if nodes < 1 or handsets < 1:
            raise ValueError("a hall needs at least one node and one handset")
        self.workdir = Path(workdir)
        self.broker_url = broker_url
        self.node_count = nodes
        self.handset_count = handsets
        self.library = library
        self.rng = random.Random(seed)
        self.hold_off = hold_off
        self.on_tap = on_tap
        self.authority = HubAuthority.generate()
        self.nodes: list[HallNode] = []
        self.handsets: list[SimulatedHandset] = []
        self.air: VirtualAir | None = None

    def node_config(self, node_id: str, zone: str, nfc_device: str, ble_adapter: str) -> NodeConfig:
        return cfg.load(NodeConfig, data={
            "node": {"id": node_id, "zone": zone, "data_dir": "data",
                     "library": str(self.library)},
            "nfc": {"device": nfc_device, "hold_off": self.hold_off},
            "ble": {"adapter": ble_adapter},
            "mqtt": {"brokers": [self.broker_url]},
        }, environ={})

    async def start(self) -> None:
        from handset_app.sim import SimulatedHandset
        from node.daemon import NodeDaemon
        from hall.air import VirtualAir

        self.authority.save(self.workdir / "hub-authority")
        self.air = VirtualAir()
        expires = time.time() + CERT_LIFETIME
        for i in range(self.node_count):
            node_id, zone = f"node-{i + 1}", ZONES[i % len(ZONES)]
            node_dir = self.workdir / "nodes" / node_id
            nfc_device = f"udp:127.0.0.1:{free_port()}"
            conf = self.node_config(node_id, zone, nfc_device, await self.air.serve(node_id))
            write_node_credentials(node_dir, self.authority, node_id, zone, expires, conf.keys)
            config_path = node_dir / "node.toml"
            config_path.write_text(cfg.dump(conf))
            daemon = NodeDaemon(conf, base_dir=node_dir, on_tap=self.on_tap)
            await daemon.start()
            self.nodes.append(HallNode(node_id, zone, nfc_device, config_path, daemon,
                                       asyncio.Lock()))
        for j in range(self.handset_count):
            creds = make_handset_credentials(self.authority, f"handset-{j + 1}", expires)
            handset = SimulatedHandset(creds, self.air.local_adapter(creds.handset_id),
                                       rng=random.Random(self.rng.random()))
            await handset.start()
            self.handsets.append(handset)

    async def tap(self, handset: SimulatedHandset, node: HallNode, **kwargs: Any) -> TapReport:
        """``handset`` taps ``node``'s display, waiting its turn."""
        async with node.lock:
            return await handset.tap(node.nfc_device, **kwargs)

    async def drain(self, timeout: float) -> bool:
        """Wait until every node has finished the taps it saw and the hub acked its
        whole outbox; False on timeout."""
        async def settle(node: HallNode) -> None:
            await node.daemon.wait_idle()
            await node.daemon.uplink.wait_drained()

        try:
            await asyncio.wait_for(asyncio.gather(*(settle(n) for n in self.nodes)), timeout)
            return True
        except TimeoutError:
            return False

    def outbox_depth(self) -> int:
        return sum(n.daemon.outbox.depth() for n in self.nodes)

    async def stop(self) -> None:
        for handset in self.handsets:
            await handset.close()
        for node in self.nodes:
            await node.daemon.stop()
        if self.air is not None:
            await self.air.close()
