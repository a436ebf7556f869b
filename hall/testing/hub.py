"""The hub for tests: in one process (fast, inspectable) or as the deployed processes.

* ``serve(config, wait_ingest=...)`` / ``HubServer``: web app on werkzeug's threaded
  server plus the MQTT ingest, in this process; ``server.app`` gives
  ``hub.get_db`` / ``hub.get_ingest``; ``server.token`` is an API token of the test
  admin (``server.get(path)`` sends it). For tests that look inside the hub.
* ``api_token(config)``: a new personal API token for a hub, of the user ``test``
  (an admin made on first use, with no password) unless told otherwise, made as
  ``tapcast hub token create`` makes it; ``make_user(config, ...)`` an account (with a
  password, for signing in).
* ``hub_config(...)`` and ``HubProcess``: ``tapcast hub web|ingest|serve`` as real
  processes, waited for by their ready line. For tests of what is deployed.

Never what ``tapcast hub web`` or ``tapcast hub serve`` run.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from hub.config import HubConfig
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from hub import attach_ingest, close_app, create_app, get_db
from hub.ingest import Ingest
from tapcast import config as cfg

log = logging.getLogger(__name__)

__all__ = ["HubServer", "serve", "hub_config", "HubProcess", "api_token", "api_get",
           "make_user", "TEST_ADMIN", "cheap_password_hashing"]


class HubServer:
    """A running in-process hub (threaded WSGI server + ingest) that another thread can
    stop."""

    def __init__(self, app: Flask, server: BaseWSGIServer, token: str = "") -> None:
        self.app = app
        self.token = token
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="hub-http",
                                        daemon=True)
        self._thread.start()
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self._server.host}:{self._server.server_port}"

    @property
    def stream_secret(self) -> bytes:
        """The hub's event-stream secret: give it to a hall whose nodes report here."""
        from tapcast.streamkeys import load_stream_secret

        return load_stream_secret(self.app.config["TAPCAST"].hub.stream_secret)

    @property
    def authority(self) -> Any:
        """The hub's signing key (tapcast.keys.HubAuthority): give it to a hall whose
        nodes should trust this hub's manifests."""
        from tapcast.keys import HubAuthority

        return HubAuthority.load_key_file(self.app.config["TAPCAST"].hub.signing_key)

    def get(self, path: str, timeout: float = 10.0) -> Any:
        """GET ``path`` of the API with this server's token; the decoded JSON."""
        return api_get(self.url + path, self.token, timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until shutdown() was called (True) or the timeout passed (False)."""
        return self._stopped.wait(timeout)

    def shutdown(self) -> None:
        if self._stopped.is_set():
            return
        self._server.shutdown()
        self._thread.join(10)
        self._server.server_close()
        close_app(self.app)
        self._stopped.set()


def serve(config: HubConfig, *, start_ingest: bool = True,
          wait_ingest: float | None = None, publish_manifests: bool = False) -> HubServer:
    """Start the hub on config.hub.host/port (port 0: any free port) in a background
    thread; returns at once. ``wait_ingest``: also wait that long for the MQTT
    subscription (TimeoutError otherwise). ``start_ingest=False``: web part only.
    ``publish_manifests``: the ingest also publishes the nodes' signed content
    manifests, as `hub ingest` does (off by default: nodes of a test hall then keep
    the content they were seeded with)."""
    import msgspec

    app = create_app(config)
    try:
        ingest = None
        if start_ingest:
            ingest = Ingest(config, get_db(app))
            attach_ingest(app, ingest)  # close_app stops it, even if start fails
            ingest.start(wait=wait_ingest)
        server = make_server(config.hub.host, config.hub.port, app, threaded=True)
        if ingest is not None and publish_manifests:
            from hub.manifests import start_publisher

            url = f"http://{server.host}:{server.server_port}"  # the port is known now
            published = msgspec.structs.replace(
                config, hub=msgspec.structs.replace(config.hub, public_url=url))
            ingest.on_stop(start_publisher(published, get_db(app).engine,
                                           ingest.publish_retained))
    except BaseException:
        close_app(app)
        raise
    hub = HubServer(app, server, api_token(config, "test"))
    log.info("in-process hub serving on %s", hub.url)
    return hub


#: The account that ``api_token`` makes its tokens for by default.
TEST_ADMIN = "test"


def cheap_password_hashing() -> Any:
    """An argon2 hasher with the cheapest parameters, for tests to put in place of
    ``hub.accounts.HASHER`` (monkeypatch): a real hash costs about a second here.
    Hashes carry their parameters, so what it hashed verifies with it alone."""
    from argon2 import PasswordHasher, profiles

    return PasswordHasher.from_parameters(profiles.CHEAPEST)


def _accounts(config: HubConfig):  # noqa: ANN202 - hub.accounts.Accounts, and its engine
    from hub.accounts import Accounts
    from hub.db import open_db

    db = open_db(config.hub.database)
    return Accounts(db.engine), db


def make_user(config: HubConfig, username: str, role: str = "admin", *,
              password: str | None = None) -> str | None:
    """An account on the hub of ``config`` (what ``tapcast hub user create`` does),
    unless one of that name exists; returns ``password``."""
    from hub.accounts import Actor

    accounts, db = _accounts(config)
    try:
        if accounts.get_user(username) is None:
            accounts.create_user(Actor.cli(), username, role, password=password)
    finally:
        db.close()
    return password


def api_token(config: HubConfig, name: str = "test", *, user: str = TEST_ADMIN,
              role: str = "admin", scopes: str = "all") -> str:
    """A new API token for the hub of ``config`` (what ``tapcast hub token create``
    does), of ``user`` (made with ``role`` and no password when missing), with
    ``scopes`` (default: all the role may); the name gets a counter when taken."""
    from hub.accounts import Actor

    make_user(config, user, role)
    accounts, db = _accounts(config)
    try:
        taken = {t.name for t in accounts.list_tokens(user)}
        unique, n = name, 1
        while unique in taken:
            n += 1
            unique = f"{name}-{n}"
        return accounts.create_token(Actor.cli(), user, unique, scopes)[1]
    finally:
        db.close()


def api_get(url: str, token: str, timeout: float = 10.0) -> Any:
    """GET an API URL with ``Authorization: Bearer <token>``; the decoded JSON (an
    HTTPError for a non-2xx answer)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def hub_config(database: Path | str, broker: str, *, port: int = 0, migrate: bool = True,
               secret_dir: Path | None = None, **hub: Any) -> HubConfig:
    """A hub config for a test: this database (a SQLite path or a PostgreSQL URL),
    this broker, a free port by default, no ``TAPCAST_*`` environment overrides. The
    database is migrated (``tapcast hub db upgrade``) unless ``migrate=False``. Unless
    ``stream_secret`` is given, the stream secret is ``stream.secret`` in
    ``secret_dir`` (default: beside a SQLite database; required for a URL), created when
    missing, so stand-in nodes can derive their keys from it."""
    from hub.migrate import upgrade
    from tapcast.streamkeys import STREAM_SECRET_FILE, write_stream_secret

    if migrate:
        upgrade(str(database), echo=log.debug)
    if "stream_secret" not in hub:
        if secret_dir is None:
            if "://" in str(database):
                raise ValueError("hub_config: give secret_dir for a database URL")
            secret_dir = Path(database).parent
        secret_path = secret_dir / STREAM_SECRET_FILE
        if not secret_path.exists():
            write_stream_secret(secret_path.parent)
        hub["stream_secret"] = str(secret_path)
    if "signing_key" not in hub:  # the hub's key for manifests, beside the secret
        from tapcast.keys import HUB_KEY_FILE, HubAuthority

        key_dir = secret_dir if secret_dir is not None else (
            None if "://" in str(database) else Path(database).parent)
        if key_dir is not None:
            if not (key_dir / HUB_KEY_FILE).exists():
                HubAuthority.generate().save(key_dir)
            hub["signing_key"] = str(key_dir / HUB_KEY_FILE)
    if "files" not in hub:  # never the working directory's var/hub/files
        base = secret_dir if secret_dir is not None else (
            None if "://" in str(database) else Path(database).parent)
        hub["files"] = str(base / "files" if base is not None
                           else Path(tempfile.mkdtemp(prefix="tapcast-files-")))
    return cfg.load(HubConfig, data={"hub": {"database": str(database), "port": port, **hub},
                                     "mqtt": {"broker": broker}}, environ={})


class HubProcess:
    """One ``tapcast hub <command>`` child process with its output collected line by
    line (stdout and stderr), so a test can wait for a line without sleeping."""

    def __init__(self, command: str, config_path: Path, *args: str,
                 env: dict[str, str] | None = None) -> None:
        self.command = command
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hall.cli", "hub", command, "--config", str(config_path),
             *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lines: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._closed = 0  # output streams that reached their end
        self._readers = [
            threading.Thread(target=self._read, args=(stream, name, sink), daemon=True)
            for stream, name, sink in ((self.proc.stdout, "stdout", self.stdout),
                                       (self.proc.stderr, "stderr", self.stderr))]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any, name: str, sink: list[str]) -> None:
        for line in stream:
            sink.append(line.rstrip("\n"))
            self._lines.put((name, line.rstrip("\n")))
        self._lines.put(None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_line(self, contains: str, timeout: float = 15.0, *,
                  stream: str = "stdout") -> str:
        """The first line (seen so far or next) on ``stream`` containing ``contains``;
        AssertionError with the output so far if the process ends or time runs out."""
        seen = self.stdout if stream == "stdout" else self.stderr
        for line in list(seen):
            if contains in line:
                return line
        deadline = time.monotonic() + timeout
        while self._closed < len(self._readers):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                item = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if item is None:
                self._closed += 1
            elif item[0] == stream and contains in item[1]:
                return item[1]
        raise AssertionError(f"`tapcast hub {self.command}` printed no line with "
                             f"{contains!r}; exit code {self.proc.poll()}\n"
                             f"stdout: {self.stdout}\nstderr: {self.stderr}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the process and wait for it; its exit code (killed after ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"`tapcast hub {self.command}` did not stop on "
                                     f"{signal.Signals(sig).name} within {timeout}s")
        for reader in self._readers:
            reader.join(5)
        return self.proc.returncode

    def __enter__(self) -> "HubProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
