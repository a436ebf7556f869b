from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hub import HubServer, serve
from hub.config import HubConfig
from tapcast import config as cfg
from hall.testing.mosquitto import Mosquitto


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real Mosquitto broker on a free port, owned by the test (restartable)."""
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def running_hub(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[HubServer]:
    """The hub (web + MQTT ingest into a fresh SQLite file) on a free port."""
    conf = cfg.load(HubConfig, data={
        "hub": {"database": str(tmp_path / "hub.db"), "port": 0},
        "mqtt": {"broker": mosquitto.url}}, environ={})
    server = serve(conf, wait_ingest=10.0)
    yield server
    server.shutdown()
