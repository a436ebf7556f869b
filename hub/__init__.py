"""Tapcast hub: Flask app factory, one blueprint per area; the MQTT ingest runs apart.

``create_app(config)`` builds the web part only and never opens MQTT: under a WSGI
server every worker calls it, and several ingests sharing the hub's MQTT client id
would knock one another off the broker. The hub's processes (``hub/run.py``):
``tapcast hub web`` (gunicorn workers, each building its own app after fork),
``tapcast hub ingest`` (the one MQTT ingest) and ``tapcast hub serve`` (both, one box).

``tapcast hub db upgrade`` creates or migrates the database, which every process
(``create_app`` included) refuses until then; ``flask --app hub run`` is Flask's
development server for the pages and API (no ingest). ``hall.testing.hub`` runs app and
ingest in one process for tests.
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from flask import Flask, Response, current_app

from tapcast.config import load

from hub.config import HubConfig

from hub.db import HubDB, open_db

if TYPE_CHECKING:
    from hub.ingest import Ingest

log = logging.getLogger(__name__)

CONFIG_ENV = "TAPCAST_HUB_CONFIG"  # path of a hub TOML file, for `flask --app hub`
#: Response header naming the process that answered: with several gunicorn workers
#: it tells an operator (and the tests) which worker served a request.
WORKER_HEADER = "X-Tapcast-Worker"
_DB = "tapcast.db"
_INGEST = "tapcast.ingest"


def create_app(config: HubConfig | None = None) -> Flask:
    """Build the hub's web app: pages and JSON API over the hub database. Opens no MQTT
    connection. Without ``config``, load the file named by $TAPCAST_HUB_CONFIG (if any)
    plus ``TAPCAST_*`` environment overrides (for ``flask --app hub``)."""
    if config is None:
        config = load(HubConfig, os.environ.get(CONFIG_ENV) or None)
    app = Flask(__name__)
    app.config["TAPCAST"] = config
    app.json.sort_keys = False  # keep documented field order in API answers

    from hub import (accounts_api, accounts_pages, api, auth, content_api, content_pages,
                     handsets_api, node_files, pages)

    init_db(app)
    auth.init_app(app)  # accounts, session key, sign-in, CSRF, the access gate
    content_api.init_app(app)  # the content library, and the upload size bound
    init_worker_header(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(accounts_api.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(accounts_pages.bp)
    app.register_blueprint(content_api.bp)
    app.register_blueprint(content_pages.bp)
    app.register_blueprint(node_files.bp)
    handsets_api.init_app(app)  # the handset app's accounts and codes, rate limited
    api.register_error_handlers(app)
    return app


def init_db(app: Flask) -> HubDB:
    """Open the hub database named in the config and attach it to ``app`` (raises
    hub.db.StorageError naming it and the reason when it cannot, e.g. not migrated)."""
    db = open_db(app.config["TAPCAST"].hub.database)
    app.extensions[_DB] = db
    return db


def init_worker_header(app: Flask) -> None:
    """Name the answering process in every response (``X-Tapcast-Worker: <pid>``)."""
    pid = str(os.getpid())  # create_app runs in each worker, after gunicorn forked it

    @app.after_request
    def add_worker_header(response: Response) -> Response:
        response.headers[WORKER_HEADER] = pid
        return response


def attach_ingest(app: Flask, ingest: Ingest) -> None:
    """Let ``/api/v1/stats`` report the counters of an ingest running in this same
    process (the in-process test server does that; ``hub web`` has none)."""
    app.extensions[_INGEST] = ingest


def get_db(app: Flask | None = None) -> HubDB:
    return (app or current_app).extensions[_DB]


def get_ingest(app: Flask | None = None) -> Ingest | None:
    """The ingest attached to the app with ``attach_ingest``, or None (``hub web``)."""
    return (app or current_app).extensions.get(_INGEST)


def close_app(app: Flask) -> None:
    """Stop an attached ingest (storing what it has queued) and close the database."""
    ingest = app.extensions.pop(_INGEST, None)
    if ingest is not None:
        ingest.stop()
    db = app.extensions.get(_DB)
    if db is not None:
        db.close()
