from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tapcast.testing.mosquitto import Mosquitto


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real Mosquitto broker on a free port, owned by the test (restartable)."""
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.stop()
