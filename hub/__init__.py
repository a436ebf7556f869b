"""Tapcast hub: Flask app factory, one blueprint per area, MQTT ingest alongside.

``flask --app hub run`` serves the app with the ingest running (use ``--no-reload``:
the reloader would start a second ingest with the same MQTT client id);
``flask --app hub init-db`` creates the database. The tapcast CLI and the demo call
``serve(config)``, which returns a handle with ``.url`` and ``.shutdown()``.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import click
from flask import Flask, current_app
from werkzeug.serving import BaseWSGIServer, make_server

from tapcast.config import load

from hub.config import HubConfig

from hub.db import HubDB, open_db
from hub.ingest import Ingest

log = logging.getLogger(__name__)

CONFIG_ENV = "TAPCAST_HUB_CONFIG"  # path of a hub TOML file, for `flask --app hub`
_DB = "tapcast.db"
_INGEST = "tapcast.ingest"


def create_app(config: HubConfig | None = None, *, start_ingest: bool = True) -> Flask:
    """Build the hub app. Without ``config``, load the file named by $TAPCAST_HUB_CONFIG
    (if any) plus ``TAPCAST_*`` environment overrides. ``start_ingest=False`` gives the
    web part alone (tests, CLI commands that only touch the database)."""
    if config is None:
        config = load(HubConfig, os.environ.get(CONFIG_ENV) or None)
    app = Flask(__name__)
    app.config["TAPCAST"] = config
    app.json.sort_keys = False  # keep documented field order in API answers

    from hub import api, pages

    init_db(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(pages.bp)
    api.register_error_handlers(app)
    _register_cli(app)
    if start_ingest and not _loaded_for_flask_cli_command():
        init_ingest(app)
    return app


def init_db(app: Flask) -> HubDB:
    """Open the hub database named in the config and attach it to ``app``."""
    db = open_db(app.config["TAPCAST"].hub.database)
    app.extensions[_DB] = db

    @app.teardown_appcontext
    def release_connection(exc: BaseException | None) -> None:
        db.release()

    return db


def init_ingest(app: Flask, *, wait: float | None = None) -> Ingest:
    """Start the MQTT ingest writing into the app's database (reconnects on its own)."""
    ingest = Ingest(app.config["TAPCAST"], get_db(app))
    ingest.start(wait=wait)
    app.extensions[_INGEST] = ingest
    return ingest


def get_db(app: Flask | None = None) -> HubDB:
    return (app or current_app).extensions[_DB]


def get_ingest(app: Flask | None = None) -> Ingest | None:
    """The running ingest, or None when the app was built without one."""
    return (app or current_app).extensions.get(_INGEST)


def close_app(app: Flask) -> None:
    """Stop the ingest (storing what it has queued) and close the database."""
    ingest = app.extensions.pop(_INGEST, None)
    if ingest is not None:
        ingest.stop()
    db = app.extensions.get(_DB)
    if db is not None:
        db.close()


def _loaded_for_flask_cli_command() -> bool:
    """True when Flask's CLI loads the app for a command other than ``run`` (e.g.
    ``init-db``): starting an ingest there would take the hub's MQTT client id away
    from the running hub."""
    if os.environ.get("FLASK_RUN_FROM_CLI") != "true":
        return False
    ctx = click.get_current_context(silent=True)
    return ctx is None or ctx.info_name != "run"


def _register_cli(app: Flask) -> None:
    @app.cli.command("init-db")
    def init_db_command() -> None:
        """Create the hub database (tables are created when it is opened)."""
        click.echo(f"hub database ready: {Path(get_db(app).path).resolve()}")


class HubServer:
    """A running hub (threaded WSGI server + ingest) that another thread can stop."""

    def __init__(self, app: Flask, server: BaseWSGIServer) -> None:
        self.app = app
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="hub-http",
                                        daemon=True)
        self._thread.start()
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self._server.host}:{self._server.server_port}"

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
          wait_ingest: float | None = None) -> HubServer:
    """Start the hub on config.hub.host/port (port 0: any free port) in a background
    thread; returns at once. ``wait_ingest``: also wait that long for the MQTT
    subscription (TimeoutError otherwise)."""
    app = create_app(config, start_ingest=False)
    try:
        if start_ingest:
            init_ingest(app, wait=wait_ingest)
        server = make_server(config.hub.host, config.hub.port, app, threaded=True)
    except BaseException:
        close_app(app)
        raise
    hub = HubServer(app, server)
    log.info("hub serving on %s", hub.url)
    return hub
