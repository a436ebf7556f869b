"""`tapcast demo`: broker, hub, a virtual hall, and handsets tapping at random displays.

Shows a live line (taps, authenticated, items delivered, failures, events stored at the
hub) and ends, on --duration or Ctrl-C, with a summary. The run is "ok" when taps were
served and every event the nodes recorded reached the hub.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING

from tapcast import config as cfg
from hall.virtual import VirtualHall
from hall.testing.mosquitto import free_port

if TYPE_CHECKING:
    from handset_app.sim import SimulatedHandset, TapReport

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 15.0


@dataclass
class Summary:
    duration: float = 0.0
    taps: int = 0
    authenticated: int = 0
    items: int = 0
    failures: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    auth_ms: list[float] = field(default_factory=list)
    item_ms: list[float] = field(default_factory=list)
    hub_events: int = 0
    undelivered_events: int = 0
    hub_url: str = ""

    @property
    def ok(self) -> bool:
        return self.taps > 0 and self.authenticated > 0 and self.undelivered_events == 0

    def add(self, report: TapReport) -> None:
        self.taps += 1
        if report.authenticated is not None:
            self.authenticated += 1
            self.auth_ms.append((report.authenticated - report.started) * 1000)
        if report.first_item_at is not None:
            self.item_ms.append((report.first_item_at - report.started) * 1000)
        self.items += len(report.items)
        if report.error:
            self.failures += 1
            key = report.error[:80]
            self.errors[key] = self.errors.get(key, 0) + 1

    def live_line(self, elapsed: float, total: float) -> str:
        return (f"{elapsed:5.1f}/{total:.0f}s  taps {self.taps}  authenticated {self.authenticated}"
                f"  items {self.items}  failures {self.failures}  events at hub {self.hub_events}")

    def render(self) -> str:
        def pct(values: list[float], q: int) -> str:
            if len(values) < 2:
                return f"{values[0]:.0f} ms" if values else "-"
            return f"{statistics.quantiles(values, n=100, method='inclusive')[q - 1]:.0f} ms"

        lines = [
            f"Demo summary ({self.duration:.1f} s)",
            f"  taps            {self.taps} ({self.authenticated} authenticated, {self.failures} failed)",
            f"  items delivered {self.items}",
            f"  tap -> authenticated   p50 {pct(self.auth_ms, 50)}   p99 {pct(self.auth_ms, 99)}",
            f"  tap -> first item      p50 {pct(self.item_ms, 50)}   p99 {pct(self.item_ms, 99)}",
            f"  events stored at hub   {self.hub_events}"
            + ("" if not self.undelivered_events else
               f"   NOT YET DELIVERED: {self.undelivered_events} (still in node outboxes)"),
        ]
        for reason, count in sorted(self.errors.items(), key=lambda kv: -kv[1]):
            lines.append(f"  failure x{count}: {reason}")
        lines.append("  result: " + ("ok" if self.ok else "NOT OK"))
        return "\n".join(lines)


def run_demo(*, nodes: int, handsets: int, duration: float, broker: str | None,
             hub_port: int, workdir: Path, seed: int | None) -> Summary:
    """Run the whole system; blocking. Returns the summary (also printed)."""
    from hub import get_ingest, serve
    from hub.config import HubConfig
    from hall.embedded_broker import EmbeddedBroker

    workdir = Path(workdir) / time.strftime("%Y%m%d-%H%M%S")
    workdir.mkdir(parents=True, exist_ok=True)
    embedded = None
    if broker is None:
        embedded = EmbeddedBroker(free_port())
        embedded.start()
        broker = embedded.url
    hub_conf = cfg.load(HubConfig, data={
        "hub": {"database": str(workdir / "hub" / "hub.db"), "port": hub_port},
        "mqtt": {"broker": broker}}, environ={})
    (workdir / "hub").mkdir(exist_ok=True)
    try:
        hub = serve(hub_conf, wait_ingest=10.0)
    except OSError as exc:
        if embedded:
            embedded.stop()
        raise OSError(f"cannot serve the hub on port {hub_port} ({exc.strerror}): "
                      "pass --hub-port 0 to take any free port") from None
    except BaseException:
        if embedded:
            embedded.stop()
        raise
    summary = Summary(hub_url=hub.url)
    print(f"Tapcast demo: {nodes} nodes, {handsets} handsets, {duration:.0f} s, broker {broker}\n"
          f"hub: {hub.url}  (API: {hub.url}/api/v1/nodes)   files: {workdir}\n"
          "Ctrl-C stops early.", flush=True)
    ingest = get_ingest(hub.app)
    try:
        asyncio.run(_run_hall(workdir, broker, nodes, handsets, duration, seed, summary,
                              lambda: ingest.counters.stored if ingest else 0))
    finally:
        hub.shutdown()
        if embedded:
            embedded.stop()
    print(summary.render(), flush=True)
    return summary


async def _run_hall(workdir: Path, broker: str, nodes: int, handsets: int, duration: float,
                    seed: int | None, summary: Summary, hub_stored: Callable[[], int]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    hall = VirtualHall(workdir, broker, nodes=nodes, handsets=handsets, seed=seed)
    started = time.monotonic()
    await hall.start()
    tty = sys.stderr.isatty()

    async def customer(handset: SimulatedHandset) -> None:
        while not stop.is_set():
            node = hall.rng.choice(hall.nodes)
            summary.add(await hall.tap(handset, node))
            try:  # a customer reads for a moment before the next display
                await asyncio.wait_for(stop.wait(), hall.rng.uniform(0.3, 1.5))
            except TimeoutError:
                pass

    async def show() -> None:
        last_plain = 0.0
        while not stop.is_set():
            elapsed = time.monotonic() - started
            summary.hub_events = hub_stored()
            if tty:
                sys.stderr.write("\r" + summary.live_line(elapsed, duration) + "   ")
                sys.stderr.flush()
            elif elapsed - last_plain >= 5:
                last_plain = elapsed
                print(summary.live_line(elapsed, duration), flush=True)
            if elapsed >= duration:
                stop.set()
            try:
                await asyncio.wait_for(stop.wait(), 0.25)
            except TimeoutError:
                pass

    try:
        await asyncio.gather(show(), *(customer(h) for h in hall.handsets))
        if tty:
            sys.stderr.write("\n")
        print(f"stopping; waiting up to {DRAIN_TIMEOUT:.0f} s for node outboxes to reach the hub",
              flush=True)
        await hall.drain(DRAIN_TIMEOUT)
        summary.undelivered_events = hall.outbox_depth()
    finally:
        summary.duration = time.monotonic() - started
        await hall.stop()
        summary.hub_events = hub_stored()
