"""`tapcast demo`: broker, hub, a virtual hall, and handsets tapping at random displays.

Processes as in production: a broker (Mosquitto when installed, else the embedded
amqtt one, or the one given with --broker), `tapcast hub web` and `tapcast hub ingest`,
and one `tapcast node run` per node; this process hosts the virtual BLE air and the
crowd of simulated handsets. Shows a live line (taps, authenticated, items delivered,
failures, events stored at the hub) and ends, on --duration or Ctrl-C, with a summary.
The run is "ok" only when taps were served, none failed, and every event the nodes
recorded reached the hub.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import statistics
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hub.config import HubConfig
from tapcast import config as cfg
from tapcast.mqttclient import parse_broker_url

from hall.testing.mosquitto import free_port

if TYPE_CHECKING:
    from handset_app.sim import SimulatedHandset, TapReport

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 15.0
#: --broker value that asks for the embedded amqtt broker even when Mosquitto is there.
EMBEDDED = "embedded"
HUB_START_TIMEOUT = 30.0


class DemoError(RuntimeError):
    """The demo cannot run; the message names the cause and what to do."""


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
    broker: str = ""
    nodes_up_s: float = 0.0

    @property
    def ok(self) -> bool:
        return (self.taps > 0 and self.authenticated > 0 and self.failures == 0
                and self.undelivered_events == 0)

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
            f"  tap -> authenticated   p50 {pct(self.auth_ms, 50)}   p99 {pct(self.auth_ms, 99)}"
            f"   (n={len(self.auth_ms)})",
            f"  tap -> first item      p50 {pct(self.item_ms, 50)}   p99 {pct(self.item_ms, 99)}"
            f"   (n={len(self.item_ms)})",
            f"  events stored at hub   {self.hub_events}"
            + ("" if not self.undelivered_events else
               f"   NOT DELIVERED: {self.undelivered_events} (still in node outboxes)"),
        ]
        for reason, count in sorted(self.errors.items(), key=lambda kv: -kv[1]):
            lines.append(f"  failure x{count}: {reason}")
        if self.ok:
            lines.append("  result: ok")
        else:
            why = []
            if self.taps == 0 or self.authenticated == 0:
                why.append("no tap was served")
            if self.failures:
                why.append(f"{self.failures} tap(s) failed")
            if self.undelivered_events:
                why.append(f"{self.undelivered_events} event(s) did not reach the hub")
            lines.append("  result: NOT OK (" + "; ".join(why) + ")")
        return "\n".join(lines)


# ------------------------------------------------------------------- the broker


def _check_broker(url: str, timeout: float = 2.0) -> None:
    try:
        broker = parse_broker_url(url)
    except ValueError as exc:
        raise DemoError(f"--broker: {exc}") from None
    try:
        socket.create_connection((broker.host, broker.port), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise DemoError(f"cannot reach the MQTT broker at {url} ({reason}): start it, or omit "
                        "--broker to let the demo run its own") from None


def _start_broker(workdir: Path, *, embedded: bool = False) -> tuple[str, Any]:
    """Mosquitto when installed (as in production), else (or when asked) the embedded
    amqtt broker."""
    from hall.testing.mosquitto import Mosquitto, find_mosquitto

    try:
        if embedded:
            raise RuntimeError("asked for the embedded broker")
        find_mosquitto()
    except RuntimeError:
        from hall.embedded_broker import EmbeddedBroker

        if not embedded:
            print("Mosquitto is not installed: using the embedded amqtt broker instead "
                  "(`make demo` installs Debian's mosquitto)", flush=True)
        amqtt = EmbeddedBroker(free_port())
        amqtt.start()
        return amqtt.url, amqtt
    broker = Mosquitto(workdir / "broker")
    broker.start()
    return broker.url, broker


# ---------------------------------------------------------------------- the hub


def check_hub_port(port: int) -> None:
    """DemoError naming the fix when the hub's web server could not bind ``port``.
    Binds as gunicorn does (SO_REUSEADDR), so the connections of a demo that just ended,
    still in TIME_WAIT, do not count as taken: running the demo twice in a row works."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            raise DemoError(f"cannot serve the hub on port {port} ({exc.strerror}):"
                            " pass --hub-port 0 to take any free port") from None


class HubProcesses:
    """`tapcast hub web` and `tapcast hub ingest`, each its own process, as deployed."""

    def __init__(self, workdir: Path, broker: str, port: int, stream_secret: Path,
                 database: str | None = None, signing_key: Path | None = None) -> None:
        self.dir = workdir / "hub"
        self.dir.mkdir(parents=True, exist_ok=True)
        # A free port chosen now, not by gunicorn: the manifests tell nodes where hub web
        # is before it listens.
        port = port or free_port()
        self.config_path = self.dir / "hub.toml"
        self.database = database or str(self.dir / "hub.db")
        conf = cfg.load(HubConfig, data={
            "hub": {"database": self.database, "port": port,
                    "stream_secret": str(stream_secret), "files": str(self.dir / "files"),
                    "signing_key": str(signing_key or self.dir / "no-signing-key"),
                    # nodes fetch content files here; the port is known before web starts
                    "public_url": f"http://127.0.0.1:{port}"},
            "mqtt": {"broker": broker}}, environ={})
        self.config_path.write_text(cfg.dump(conf))
        # Made in start(), once the database is migrated: an admin account with a random
        # password (printed, for the page) and a token of it (the demo reads
        # /api/v1/stats with it; printed, for curl).
        self.username = self.password = self.token = self.imported = ""
        self.port = port
        self.url = ""
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self._logs: list[Any] = []
        self._pumps: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        if self.port:
            check_hub_port(self.port)
        # `tapcast hub db upgrade` first: the hub's processes refuse an unmigrated database.
        from hub.dbengine import StorageError
        from hub.migrate import upgrade

        try:
            await asyncio.to_thread(upgrade, self.database, echo=log.info)
        except StorageError as exc:
            raise DemoError(f"--database: {exc}") from None
        await asyncio.to_thread(self._make_admin)
        self.imported = await asyncio.to_thread(self._import_content)
        ingest_line = await self._spawn("ingest", "hub ingest subscribed")
        web_line = await self._spawn("web", "hub web")
        found = re.search(r"https?://\S+", web_line)
        self.url = found.group(0).rstrip(".,)") if found else f"http://127.0.0.1:{self.port}"
        log.info("%s / %s", ingest_line, web_line)

    def _make_admin(self) -> None:
        """The demo's admin, as `tapcast hub user create` and `tapcast hub token create`
        make them: "demo" (or demo-PID when a database given with --database has one),
        with a random password, never a fixed one."""
        import secrets

        from hub.accounts import Accounts, Actor
        from hub.db import open_db

        db = open_db(self.database)
        try:
            accounts = Accounts(db.engine)
            username = "demo" if accounts.get_user("demo") is None else f"demo-{os.getpid()}"
            password = secrets.token_urlsafe(12)
            actor = Actor.cli()
            accounts.create_user(actor, username, "admin", password=password,
                                 display_name="tapcast demo")
            self.token = accounts.create_token(actor, username, "demo", "all")[1]
        finally:
            db.close()
        self.username, self.password = username, password

    def _import_content(self) -> str:
        """The sample library (content/), as `tapcast content import content/` brings it
        in: the same function, the same checks. Importing into a database that has it
        already changes nothing."""
        from hub.accounts import Actor
        from hub.content import ContentLibrary, import_directory
        from hub.db import open_db
        from hub.files import FileStore

        from hall.virtual import LIBRARY

        conf = cfg.load(HubConfig, self.config_path, environ={})
        db = open_db(self.database)
        try:
            library = ContentLibrary(db.engine, FileStore(conf.hub.files),
                                     max_file_size=conf.hub.max_file_mb * 1_000_000)
            report = import_directory(library, LIBRARY.parent, Actor.cli())
        finally:
            db.close()
        return (f"content: {len(report.created)} items imported, "
                f"{len(report.unchanged)} unchanged")

    @property
    def sign_in(self) -> str:
        """How to sign in, as printed."""
        return f"sign in as {self.username} with password {self.password}"

    async def _spawn(self, what: str, ready_prefix: str) -> str:
        log_file = (self.dir / f"{what}.log").open("a", encoding="utf-8")
        self._logs.append(log_file)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hall.cli", "hub", what, "--config", str(self.config_path),
            stdout=asyncio.subprocess.PIPE, stderr=log_file,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.procs[what] = proc
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def pump() -> None:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                line = raw.decode(errors="replace")
                log_file.write(line)
                log_file.flush()
                if not ready.done() and line.startswith(ready_prefix):
                    ready.set_result(line.strip())
            if not ready.done():
                ready.set_exception(DemoError(
                    f"`tapcast hub {what}` exited with code {await proc.wait()}; see "
                    f"{self.dir / (what + '.log')}: {_last_line(self.dir / (what + '.log'))}"))

        self._pumps.append(asyncio.create_task(pump()))
        try:
            return await asyncio.wait_for(ready, HUB_START_TIMEOUT)
        except TimeoutError:
            raise DemoError(f"`tapcast hub {what}` did not start within {HUB_START_TIMEOUT:.0f} s;"
                            f" see {self.dir / (what + '.log')}") from None

    def stored_events(self) -> int | None:
        """Events stored at the hub, from its API (None when it does not answer)."""
        request = urllib.request.Request(f"{self.url}/api/v1/stats",
                                         headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return int(json.load(response)["events"]["total"])
        except (OSError, urllib.error.URLError, ValueError, KeyError, TypeError):
            return None

    async def stop(self) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for what, proc in self.procs.items():
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                log.warning("hub %s did not stop; killing it", what)
                proc.kill()
                await proc.wait()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        for log_file in self._logs:
            log_file.close()


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


# --------------------------------------------------------------------- the run


def run_demo(*, nodes: int, handsets: int, duration: float, broker: str | None,
             hub_port: int, workdir: Path, seed: int | None,
             keep_hub: bool = False, database: str | None = None,
             app: bool = False) -> Summary:
    """Run the whole system; blocking. Returns the summary (also printed). Raises
    DemoError with one line naming the cause when it cannot run."""
    if nodes < 1 or handsets < 1:
        raise DemoError("--nodes and --handsets must be at least 1")
    workdir = Path(workdir) / time.strftime("%Y%m%d-%H%M%S")
    workdir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_run(nodes, handsets, duration, broker, hub_port, workdir, seed, keep_hub,
                            database, app))


async def _run(nodes: int, handsets: int, duration: float, broker: str | None, hub_port: int,
               workdir: Path, seed: int | None, keep_hub: bool,
               database: str | None = None, app: bool = False) -> Summary:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    owned_broker: Any = None
    if broker is not None and broker != EMBEDDED:
        _check_broker(broker)
    else:
        broker, owned_broker = _start_broker(workdir, embedded=broker == EMBEDDED)
    # The hub authority's stream secret first: the hub's ingest checks the nodes'
    # batches with it, and the hall provisions each node's stream key from it.
    from tapcast.keys import HUB_KEY_FILE, HubAuthority
    from tapcast.streamkeys import STREAM_SECRET_FILE, write_stream_secret

    write_stream_secret(workdir / "hub-authority")
    # And its signing key: the hub signs each node's content manifest with it, and the
    # hall's nodes trust it (their hub.pub).
    HubAuthority.generate().save(workdir / "hub-authority")
    hub = HubProcesses(workdir, broker, hub_port, workdir / "hub-authority" / STREAM_SECRET_FILE,
                       database, signing_key=workdir / "hub-authority" / HUB_KEY_FILE)
    summary = Summary(broker=broker)
    try:
        await hub.start()
        summary.hub_url = hub.url
        print(f"Tapcast demo: {nodes} nodes, {handsets} handsets, {duration:.0f} s, broker {broker}\n"
              f"hub: {hub.url}  {hub.sign_in}\n"
              f"  (API: curl -H 'Authorization: Bearer {hub.token}' {hub.url}/api/v1/nodes)"
              f"   files: {workdir}\n"
              f"{hub.imported} (see {hub.url}/content)\n"
              "Ctrl-C stops early.", flush=True)
        await _run_hall(workdir, broker, nodes, handsets, duration, seed, summary, hub, stop,
                        app=app)
        print(summary.render(), flush=True)
        if keep_hub and not stop.is_set():
            print(f"hub still up at {hub.url} (--keep-hub; {hub.sign_in}; API token "
                  f"{hub.token}); Ctrl-C stops it", flush=True)
            await stop.wait()
        elif keep_hub:
            print(f"hub still up at {hub.url} (--keep-hub; {hub.sign_in}; API token "
                  f"{hub.token}); Ctrl-C again stops it", flush=True)
            stop.clear()
            await stop.wait()
    finally:
        await hub.stop()
        if owned_broker is not None:
            owned_broker.stop()
    return summary


async def _run_hall(workdir: Path, broker: str, nodes: int, handsets: int, duration: float,
                    seed: int | None, summary: Summary, hub: HubProcesses,
                    stop: asyncio.Event, *, app: bool = False) -> None:
    from hall.virtual import NodeProcessError, VirtualHall

    from tapcast.streamkeys import STREAM_SECRET_FILE, load_stream_secret

    from tapcast.keys import HubAuthority

    hall = VirtualHall(workdir, broker, nodes=nodes, handsets=handsets, seed=seed,
                       stream_secret=load_stream_secret(
                           workdir / "hub-authority" / STREAM_SECRET_FILE),
                       authority=HubAuthority.load(workdir / "hub-authority"))
    t0 = time.monotonic()
    try:
        await hall.start()
    except NodeProcessError as exc:
        await hall.stop()
        raise DemoError(str(exc)) from None
    summary.nodes_up_s = time.monotonic() - t0
    slowest = max(n.started_in for n in hall.nodes)
    print(f"{nodes} node processes serving taps after {summary.nodes_up_s:.1f} s "
          f"(slowest {slowest:.1f} s)", flush=True)
    window: AppWindow | None = None
    crowd_nodes = hall.nodes
    if app:
        window = AppWindow(workdir / "app")
        try:
            print(await window.start(hall, hub.url), flush=True)
        except DemoError:
            await hall.stop()
            raise
        if len(hall.nodes) > 1:  # the app's own display: no queue of simulated phones
            crowd_nodes = hall.nodes[1:]
    started = time.monotonic()
    tty = sys.stderr.isatty()

    async def customer(handset: SimulatedHandset) -> None:
        while not stop.is_set():
            node = hall.rng.choice(crowd_nodes)
            summary.add(await hall.tap(handset, node))
            try:  # a customer reads for a moment before the next display
                await asyncio.wait_for(stop.wait(), hall.rng.uniform(0.3, 1.5))
            except TimeoutError:
                pass

    async def refresh_hub_count() -> None:
        stored = await asyncio.to_thread(hub.stored_events)
        if stored is not None:
            summary.hub_events = stored

    async def show() -> None:
        last_plain = 0.0
        while not stop.is_set():
            elapsed = time.monotonic() - started
            await refresh_hub_count()
            if tty:
                sys.stderr.write("\r" + summary.live_line(elapsed, duration) + "   ")
                sys.stderr.flush()
            elif elapsed - last_plain >= 5:
                last_plain = elapsed
                print(summary.live_line(elapsed, duration), flush=True)
            if elapsed >= duration:
                stop.set()
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                pass

    try:
        await asyncio.gather(show(), *(customer(h) for h in hall.handsets))
        if tty:
            sys.stderr.write("\n")
        print(f"stopping; waiting up to {DRAIN_TIMEOUT:.0f} s for node outboxes to reach the hub",
              flush=True)
        await hall.drain(DRAIN_TIMEOUT)
    finally:
        summary.duration = time.monotonic() - started
        if window is not None:
            await window.stop()
        await hall.stop()
        summary.undelivered_events = await asyncio.to_thread(hall.outbox_depth)
        await refresh_hub_count()


# ------------------------------------------------------------------ the app window

APP_START_TIMEOUT = 30.0


class AppWindow:
    """`tapcast handset app` as one of the demo's handsets: its own process, with its own
    controller on the hall's BLE air (attached over TCP as a node is), credentials the
    hall's authority signed (the hub's own key: signing in or registering works too),
    the hall's displays on its Tap screen and the demo's hub for display codes."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.proc: asyncio.subprocess.Process | None = None
        self._log: Any = None

    async def start(self, hall: Any, hub_url: str) -> str:
        """Start the window; returns its ready line (DemoError when it does not come)."""
        from tapcast.keys import write_handset_credentials

        from hall.cli import APP_READY_PREFIX
        from hall.virtual import CERT_LIFETIME

        self.dir.mkdir(parents=True, exist_ok=True)
        radio = await hall.air.serve("handset-app")
        credentials = self.dir / "credentials"
        write_handset_credentials(credentials, hall.authority, "handset-app",
                                  time.time() + CERT_LIFETIME)
        displays = [f"--display={node.node_id} ({node.zone}"
                    + (", the app's own" if i == 0 and len(hall.nodes) > 1 else "")
                    + f")={node.nfc_device}" for i, node in enumerate(hall.nodes)]
        self._log = (self.dir / "app.log").open("a", encoding="utf-8")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hall.cli", "handset", "app", "--data-dir",
            str(self.dir / "data"), "--ble", radio, "--hub", hub_url, "--credentials",
            str(credentials), *displays, stdout=asyncio.subprocess.PIPE, stderr=self._log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(APP_START_TIMEOUT):
                async for raw in self.proc.stdout:
                    line = raw.decode(errors="replace").strip()
                    self._log.write(line + "\n")
                    if line.startswith(APP_READY_PREFIX):
                        return f"app window: {line} (log {self.dir / 'app.log'})"
        except TimeoutError:
            pass
        await self.stop()
        raise DemoError(f"the app window did not start (is there a display? DISPLAY="
                        f"{os.environ.get('DISPLAY', '')!r}); see {self.dir / 'app.log'}: "
                        f"{_last_line(self.dir / 'app.log')}")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
