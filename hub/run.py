"""The hub's processes: ``hub web``, ``hub ingest``, ``hub serve`` (the CLI wires them).

Why separate processes: the web part scales by adding gunicorn workers, and the ingest
must run exactly once per MQTT client id (a second one with the same id takes the
session over and the broker disconnects the first, back and forth). So ``create_app``
never opens MQTT, ``hub web`` runs only workers, ``hub ingest`` runs the ingest (one
process, or ``--workers N`` forked workers on an MQTT 5 shared subscription, each with
its own client id), and ``hub serve`` runs both for a single box: one ingest in this
process, gunicorn in a child forked before any thread starts.

Start-up errors are ``HubStartError`` (a ``click.ClickException``): one line naming
the setting, the value and the reason, no traceback. Each process prints one line to
stdout, flushed, when it is ready ("hub web on http://...", "hub ingest subscribed at
mqtt://..."), so scripts and tests can wait for it. SIGTERM or SIGINT stops them
cleanly: the ingest stores what it has queued, gunicorn finishes requests in flight.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import multiprocessing
import os
import selectors
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from hub.config import HubConfig
from hub.db import HubDB, StorageError, open_db
from tapcast.mqttclient import BrokerUrl, parse_broker_url

if TYPE_CHECKING:
    from hub.ingest import Ingest

log = logging.getLogger(__name__)

Echo = Callable[[str], None]

BROKER_SCHEMES = ("mqtt", "mqtts")
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class HubStartError(click.ClickException):
    """The hub cannot start; the message is one line: what, where, and what to change."""


def _echo(line: str) -> None:
    click.echo(line)
    sys.stdout.flush()


# ------------------------------------------------------------------- checks


def check_broker_url(url: str) -> BrokerUrl:
    """``[mqtt] broker`` must be mqtt:// or mqtts://; anything else is refused before
    the ingest starts (paho would only say it failed, again and again)."""
    parts = urlsplit(url)
    shown = _without_password(url)
    if parts.scheme not in BROKER_SCHEMES:
        got = f"{parts.scheme}://" if parts.scheme else "no scheme"
        raise HubStartError(f"[mqtt] broker {shown!r}: expected an mqtt:// or mqtts:// URL "
                            f"(for example mqtt://127.0.0.1:1883), got {got}")
    try:
        return parse_broker_url(url)
    except ValueError as exc:
        raise HubStartError(f"[mqtt] broker {shown!r}: {exc}") from None


def open_database(config: HubConfig) -> HubDB:
    """The hub database, or HubStartError naming it and the reason (unreachable, not
    migrated: the message says to run `tapcast hub db upgrade`)."""
    try:
        return open_db(config.hub.database)
    except StorageError as exc:
        raise HubStartError(str(exc)) from None


def upgrade_database(config: HubConfig, *, echo: Echo = _echo) -> None:
    """``tapcast hub db upgrade``: migrate ``[hub] database`` to this hub's schema."""
    from hub.migrate import upgrade

    try:
        upgrade(config.hub.database, echo=echo)
    except StorageError as exc:
        raise HubStartError(str(exc)) from None


def check_web_app(config: HubConfig) -> None:
    """Build the app once in the master before forking workers: a bad database fails
    here in one line, not in every worker. Closed again, so no connection is forked."""
    from hub import close_app, create_app

    try:
        app = create_app(config)
    except StorageError as exc:
        raise HubStartError(str(exc)) from None
    close_app(app)


def bind_web_socket(host: str, port: int) -> socket.socket:
    """Listen on ``[hub] host``/``port`` (0: any free port) before gunicorn starts, so a
    taken port is one line here instead of gunicorn's five retries and a log dump."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise HubStartError(f"[hub] host {host!r}: cannot resolve it ({exc.strerror}); "
                            "use an address such as 127.0.0.1 or 0.0.0.0") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn does
        sock.bind(addr)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise HubStartError(f"port {port} on {host} is already in use: stop what "
                                "listens there, or pick another [hub] port") from None
        raise HubStartError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): "
                            "pick another [hub] host or port") from None
    return sock


def _workers(config: HubConfig, workers: int | None) -> int:
    n = config.hub.workers if workers is None else workers
    if n < 1:
        raise HubStartError(f"workers must be at least 1, got {n} ([hub] workers or "
                            "--workers)")
    return n


def _gunicorn_loglevel() -> str:
    """gunicorn logs at the level the tapcast CLI set (-v: info), warnings by default."""
    level = logging.getLogger().getEffectiveLevel()
    return "debug" if level <= logging.DEBUG else "info" if level <= logging.INFO \
        else "warning"


# ---------------------------------------------------------------------- web


def run_web(config: HubConfig, *, workers: int | None = None, echo: Echo = _echo) -> None:
    """``tapcast hub web``: gunicorn workers serving the hub app until SIGTERM/SIGINT.
    Does not return (gunicorn exits the process)."""
    n = _workers(config, workers)
    check_web_app(config)
    sock = bind_web_socket(config.hub.host, config.hub.port)
    _run_gunicorn(config, sock, n, echo)


def _run_gunicorn(config: HubConfig, sock: socket.socket, workers: int, echo: Echo) -> None:
    from hub.webserver import HubWebApplication

    port = sock.getsockname()[1]
    host = config.hub.host
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    plural = "s" if workers != 1 else ""

    def ready(server: Any) -> None:
        log.info("hub web listening on %s, master pid %d", url, os.getpid())
        echo(f"hub web on {url} ({workers} worker{plural})")

    HubWebApplication(config, sock, workers=workers, on_ready=ready,
                      loglevel=_gunicorn_loglevel()).run()


# ------------------------------------------------------------------- ingest


class _LinkReporter:
    """Prints the ingest's broker link as it changes: once when it cannot reach the
    broker (it keeps retrying), once when subscribed, once per loss and recovery."""

    def __init__(self, broker: BrokerUrl, client_id: str, echo: Echo) -> None:
        self.broker = broker
        self.client_id = client_id
        self.echo = echo
        self.up: bool | None = None
        self.subscribed_once = False
        self._lock = threading.Lock()

    def __call__(self, up: bool, reason: str) -> None:
        with self._lock:
            if up == self.up:
                return
            if up:
                again = " again" if self.subscribed_once else ""
                line = (f"hub ingest subscribed at {self.broker} as {self.client_id!r}"
                        f"{again}")
                self.subscribed_once = True
            elif self.up:
                line = (f"lost the MQTT broker at {self.broker} ({reason}); hub ingest "
                        "keeps retrying")
            else:
                line = (f"cannot reach the MQTT broker at {self.broker} ({reason}); hub "
                        "ingest keeps retrying until it answers")
            self.up = up
            self.echo(line)


def _start_ingest(config: HubConfig, echo: Echo, worker: int = 1) -> tuple[Ingest, HubDB]:
    from hub.ingest import Ingest

    broker = check_broker_url(config.mqtt.broker)
    db = open_database(config)
    try:
        ingest = Ingest(config, db, worker=worker)
    except ValueError as exc:  # e.g. a TLS file of [mqtt] that cannot be loaded
        db.close()
        raise HubStartError(str(exc)) from None
    ingest.link_listener = _LinkReporter(broker, ingest.client_id, echo)
    ingest.start()
    if worker == 1:  # one publisher of manifests, however many ingest workers
        from hub.manifests import start_publisher

        ingest.on_stop(start_publisher(config, db.engine, ingest.publish_retained))
    return ingest, db


def _stop_ingest(ingest: Ingest, db: HubDB, echo: Echo, why: str) -> None:
    ingest.stop()  # writes what is queued before it returns
    db.close()
    c = ingest.counters
    echo(f"hub ingest stopped ({why}): {c.stored} events stored, {c.duplicates} "
         "duplicates dropped since it started")


def _ingest_workers(config: HubConfig, workers: int | None) -> int:
    n = config.mqtt.workers if workers is None else workers
    if n < 1:
        raise HubStartError(f"ingest workers must be at least 1, got {n} ([mqtt] workers "
                            "or --workers)")
    if n > 1 and not config.mqtt.shared_group:
        raise HubStartError(f"{n} ingest workers need [mqtt] shared_group (for example "
                            "\"hub\", on an MQTT 5 broker such as Mosquitto 2): without a "
                            "shared subscription each worker would get every event")
    return n


def run_ingest(config: HubConfig, *, workers: int | None = None, worker: int | None = None,
               echo: Echo = _echo) -> None:
    """``tapcast hub ingest``: the MQTT ingest until SIGTERM/SIGINT. An unreachable
    broker is not fatal: it says so and keeps retrying. ``workers`` > 1 (or ``[mqtt]
    workers``) forks that many ingest processes on the shared subscription, numbered
    1..N (each its own client id and session) and restarts one that dies; ``worker``
    runs this process as that one number (one process per systemd unit)."""
    n = 1 if worker is not None else _ingest_workers(config, workers)
    if n > 1:
        _run_ingest_workers(config, n, echo)
        return
    if worker is not None and worker < 1:
        raise HubStartError(f"--worker numbers start at 1, got {worker}")
    with _stop_signals() as signals:
        ingest, db = _start_ingest(config, echo, worker or 1)
        why = "error"
        try:
            why = signals.wait()
        finally:
            _stop_ingest(ingest, db, echo, why)


#: A worker that exits (other than by a signal) sooner than this after it started is
#: failing to start, not crashing at random: restarting it would only spin.
_MIN_WORKER_LIFE = 2.0


def _run_ingest_workers(config: HubConfig, n: int, echo: Echo) -> None:
    """N forked ingest workers; one that dies (SIGKILL, a crash) is started again under
    the same number at once, so it resumes its broker session: Mosquitto keeps handing
    a gone member of a shared subscription its share of the events until its session
    expires, and they wait there for it."""
    from tapcast.streamkeys import load_stream_secret

    check_broker_url(config.mqtt.broker)
    open_database(config).close()  # one line for a bad database, not one per worker
    try:
        load_stream_secret(config.hub.stream_secret)
    except ValueError as exc:
        raise HubStartError(str(exc)) from None
    context = multiprocessing.get_context("fork")
    with _stop_signals() as signals:
        procs: dict[int, tuple[multiprocessing.Process, float]] = {}

        def spawn(k: int) -> None:
            # Forked from this thread-free process: no lock is held by a missing thread.
            proc = context.Process(target=_ingest_child, args=(config, k, signals.fds),
                                   name=f"hub-ingest-{k}")
            proc.start()
            procs[k] = (proc, time.monotonic())

        failed = ""
        why = "error"
        try:
            for k in range(1, n + 1):
                spawn(k)
            echo(f"hub ingest: {n} workers (pids "
                 f"{', '.join(str(p.pid) for p, _ in procs.values())})")
            while True:
                why = signals.wait(*(p.sentinel for p, _ in procs.values()))
                if why != "child":
                    break
                for k, (proc, started) in sorted(procs.items()):
                    if proc.is_alive():
                        continue
                    proc.join()
                    code = proc.exitcode or 0
                    if code >= 0 and time.monotonic() - started < _MIN_WORKER_LIFE:
                        failed = (f"hub ingest worker {k} exited with code {code} at start; "
                                  "stopped the other workers (see the lines above)")
                        break
                    how = (f"was killed by {signal.Signals(-code).name}" if code < 0
                           else f"exited with code {code}")
                    echo(f"hub ingest worker {k} {how}; starting it again")
                    spawn(k)
                if failed:
                    why = "error"
                    break
        finally:
            for proc, _ in procs.values():
                if proc.is_alive():
                    os.kill(proc.pid, signal.SIGTERM)  # type: ignore[arg-type]
            for proc, _ in procs.values():
                _stop_child(proc, name="hub ingest worker")
    if failed:
        raise HubStartError(failed)
    echo(f"hub ingest stopped ({why}): {n} workers")


def _child_setup(parent_fds: tuple[int, ...]) -> None:
    """In a forked child of the hub: the parent's signal pipe and handlers are the
    parent's, and the child dies with it."""
    signal.set_wakeup_fd(-1)
    for fd in parent_fds:
        os.close(fd)
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    _die_with_parent()


def _ingest_child(config: HubConfig, worker: int, parent_fds: tuple[int, ...]) -> None:
    """One forked ingest worker of ``hub ingest --workers N``."""
    _child_setup(parent_fds)
    try:
        run_ingest(config, worker=worker)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)


# -------------------------------------------------------------------- serve


def run_serve(config: HubConfig, *, workers: int | None = None, echo: Echo = _echo) -> None:
    """``tapcast hub serve``: gunicorn (child process) and the ingest (this process)
    for one box; SIGTERM/SIGINT stops both. If the web server dies, the ingest stops
    too and this raises HubStartError."""
    n = _workers(config, workers)
    check_broker_url(config.mqtt.broker)
    check_web_app(config)
    sock = bind_web_socket(config.hub.host, config.hub.port)
    with _stop_signals() as signals:
        # Fork before any thread exists (the ingest's start threads): a fork copies only
        # the forking thread, and a lock another thread held would stay held forever.
        web = multiprocessing.get_context("fork").Process(
            target=_web_child, args=(config, sock, n, signals.fds), name="hub-web")
        web.start()
        sock.close()
        try:
            ingest, db = _start_ingest(config, echo)
        except BaseException:
            _stop_child(web)
            raise
        why = "error"
        try:
            why = signals.wait(web.sentinel)
        finally:
            if web.is_alive():
                os.kill(web.pid, signal.SIGTERM)  # type: ignore[arg-type]
            # Meanwhile gunicorn stops its workers.
            _stop_ingest(ingest, db, echo, "hub web exited" if why == "child" else why)
            _stop_child(web)
    if why == "child":
        raise HubStartError(f"hub web exited with code {web.exitcode}; stopped the ingest "
                            "too (see the lines above)")


def _web_child(config: HubConfig, sock: socket.socket, workers: int,
               parent_fds: tuple[int, ...]) -> None:
    """The forked gunicorn master of ``hub serve``."""
    _child_setup(parent_fds)
    _run_gunicorn(config, sock, workers, _echo)


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when the parent dies (even by SIGKILL), so a
    killed ``hub serve`` leaves no web server holding the port."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent's stop path still applies
        pass
    if os.getppid() == 1:
        os.kill(os.getpid(), signal.SIGTERM)


def _stop_child(proc: multiprocessing.Process, timeout: float = 20.0,
                name: str = "hub web") -> None:
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGTERM)  # type: ignore[arg-type]
    proc.join(timeout)
    if proc.is_alive():
        log.warning("%s did not stop within %.0f s; killing it", name, timeout)
        proc.kill()
        proc.join()


# ------------------------------------------------------------------ signals


class _SignalPipe:
    """SIGTERM/SIGINT delivered as bytes on a pipe (``signal.set_wakeup_fd``), so one
    ``select`` waits for a signal or a child's exit, with no race and no polling."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd

    @property
    def fds(self) -> tuple[int, int]:
        return self.read_fd, self.write_fd

    def wait(self, *sentinels: int) -> str:
        """Block until a stop signal ("SIGTERM"/"SIGINT") or a sentinel ("child")."""
        with selectors.DefaultSelector() as sel:
            sel.register(self.read_fd, selectors.EVENT_READ, "signal")
            for fd in sentinels:
                sel.register(fd, selectors.EVENT_READ, "child")
            while True:
                for key, _ in sel.select():
                    if key.data == "child":
                        return "child"
                    for signum in os.read(self.read_fd, 64):
                        if signum in _STOP_SIGNALS:
                            return signal.Signals(signum).name


@contextlib.contextmanager
def _stop_signals() -> Iterator[_SignalPipe]:
    """While inside: SIGTERM and SIGINT only write to the pipe (no KeyboardInterrupt
    in the middle of a clean stop). Restores the previous handlers on the way out."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    previous = {sig: signal.signal(sig, _ignore) for sig in _STOP_SIGNALS}
    try:
        yield _SignalPipe(read_fd, write_fd)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(previous_fd)
        os.close(read_fd)
        os.close(write_fd)


def _ignore(signum: int, frame: Any) -> None:
    """The wakeup fd carries the signal; the handler itself has nothing to do."""


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    try:
        password = parts.password
    except ValueError:
        return url
    if password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{password}@", ":***@", 1)).geturl()
