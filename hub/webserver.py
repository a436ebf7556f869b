"""gunicorn, configured from code, serving the hub app for ``tapcast hub web``.

Why gunicorn's programmatic API (``BaseApplication``) and not a gunicorn.conf.py: the
hub's own config (hub.toml) stays the only place settings live, and the command can
bind the listening socket itself first (a port in use becomes one clear line, port 0
works) and hand it over as ``fd://N``. Workers are pre-forked sync workers, and each
builds its own app with ``create_app`` after the fork (``preload_app`` stays off), so
no database connection is ever shared across processes.
"""
from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from hub import close_app, create_app
from hub.config import HubConfig

log = logging.getLogger(__name__)

__all__ = ["HubWebApplication"]


class HubWebApplication(BaseApplication):
    """``HubWebApplication(config, listener, workers=N, on_ready=...).run()`` runs the
    gunicorn master until SIGTERM/SIGINT (then it exits the process, as gunicorn does).
    ``on_ready(server)`` runs in the master once the socket is handed over, just before
    the workers are forked; requests arriving meanwhile wait in the listen backlog."""

    def __init__(self, config: HubConfig, listener: socket.socket, *, workers: int,
                 on_ready: Callable[[Any], None] | None = None,
                 loglevel: str = "warning") -> None:
        self.config = config
        self.workers = workers
        self._fd = listener.detach()  # gunicorn takes the descriptor over (and closes it)
        self._on_ready = on_ready
        self._loglevel = loglevel
        super().__init__()

    def load_config(self) -> None:
        settings: dict[str, Any] = {
            "bind": [f"fd://{self._fd}"],
            "workers": self.workers,
            "worker_class": "sync",
            "proc_name": "tapcast-hub-web",
            "loglevel": self._loglevel,
            "errorlog": "-",
            "accesslog": None,
            "timeout": 30,
            # SIGTERM: finish the requests in flight, for at most this long.
            "graceful_timeout": 10,
            "preload_app": False,
            "when_ready": self._when_ready,
            "worker_exit": _close_worker_app,
            # gunicorn >= 25.1 opens a control socket at a fixed per-user path (two
            # hubs on one machine would share it) in a master thread; not needed here.
            "control_socket_disable": True,
        }
        for key, value in settings.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self) -> Flask:
        """Runs in each worker after the fork: its own app, its own connections."""
        return create_app(self.config)

    def _when_ready(self, server: Any) -> None:
        if self._on_ready is not None:
            self._on_ready(server)


def _close_worker_app(server: Any, worker: Any) -> None:
    """Close the worker's database connections as it exits."""
    app = getattr(worker, "wsgi", None)
    if isinstance(app, Flask):
        close_app(app)
