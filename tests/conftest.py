from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from hall.testing.hub import HubServer, hub_config, serve
from hall.testing.postgres import PostgresServer
from hall.air import VirtualAir
from hall.testing.mosquitto import Mosquitto
from hall.virtual import VirtualHall


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The test run's PostgreSQL databases (created on the server `make test` makes
    sure of, dropped at the end of the run)."""
    server = PostgresServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def postgres_template(postgres: PostgresServer) -> str:
    """A PostgreSQL database at the newest schema revision, cloned per test."""
    return postgres.migrated_template()


@pytest.fixture(params=["sqlite", "postgresql"])
def hub_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated hub database of each kind, for the storage and ingest tests: a SQLite
    file in the test's folder, or a fresh PostgreSQL database (dropped afterwards)."""
    if request.param == "sqlite":
        from hub.migrate import upgrade

        path = str(tmp_path / "hub.db")
        upgrade(path, echo=lambda line: None)
        yield path
        return
    postgres: PostgresServer = request.getfixturevalue("postgres")
    with postgres.clone(request.getfixturevalue("postgres_template")) as url:
        yield url


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real Mosquitto broker on a free port, owned by the test (restartable)."""
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def running_hub_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """``running_hub``'s database: a fresh SQLite file, or with
    ``@pytest.mark.parametrize("running_hub_database", ["sqlite", "postgresql"],
    indirect=True)`` each kind in turn."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield str(tmp_path / "hub.db")
        return
    postgres: PostgresServer = request.getfixturevalue("postgres")
    with postgres.clone(request.getfixturevalue("postgres_template")) as url:
        yield url


@pytest.fixture
def running_hub(mosquitto: Mosquitto, tmp_path: Path,
                running_hub_database: str) -> Iterator[HubServer]:
    """The hub in this process (web + MQTT ingest into a fresh database, SQLite unless
    the test asks otherwise) on a free port; ``get_db(running_hub.app)`` and
    ``get_ingest(running_hub.app)`` look inside."""
    server = serve(hub_config(running_hub_database, mosquitto.url, secret_dir=tmp_path),
                   wait_ingest=10.0)
    yield server
    server.shutdown()


@pytest.fixture
async def air() -> AsyncIterator[VirtualAir]:
    """The virtual BLE air, in the test's event loop (bumble needs the running loop)."""
    air = VirtualAir()
    yield air
    await air.close()


@pytest.fixture
async def make_hall(tmp_path: Path, mosquitto: Mosquitto, running_hub: HubServer
                    ) -> AsyncIterator[Callable[..., Awaitable[VirtualHall]]]:
    """Started virtual halls (one node, one handset, no hold-off by default) whose nodes
    report to ``running_hub`` (same broker, same stream secret); stopped after the test."""
    halls: list[VirtualHall] = []

    async def make(**kwargs: object) -> VirtualHall:
        options: dict[str, object] = {"nodes": 1, "handsets": 1, "hold_off": 0.0, **kwargs}
        hall = VirtualHall(tmp_path / f"hall-{len(halls)}", mosquitto.url,
                           stream_secret=running_hub.stream_secret, **options)  # type: ignore[arg-type]
        halls.append(hall)
        await hall.start()
        return hall

    yield make
    for hall in halls:
        await hall.stop()
