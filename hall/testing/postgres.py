"""PostgreSQL for tests and benchmarks: each run makes its own databases and drops them.

The server is the one at ``$TAPCAST_TEST_POSTGRES`` (an admin URL, default
``postgresql://postgres:tapcast@127.0.0.1:5432/postgres``); ``make test`` installs and
starts Debian's PostgreSQL when nothing answers there, and gives the ``postgres`` role
that password (a server with trust authentication ignores it). ``migrated_template``
builds one database at the newest schema revision; ``clone`` copies it per test
(``CREATE DATABASE ... TEMPLATE``, much faster than migrating each time).
"""
from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import OperationalError

log = logging.getLogger(__name__)

__all__ = ["PostgresServer", "ADMIN_ENV", "DEFAULT_ADMIN_URL"]

ADMIN_ENV = "TAPCAST_TEST_POSTGRES"
DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres:tapcast@127.0.0.1:5432/postgres"


class PostgresServer:
    """Databases named ``<prefix>_<random>_*`` on one server, all dropped by ``close``."""

    def __init__(self, admin_url: str | None = None, prefix: str = "tapcast_test") -> None:
        url = make_url(admin_url or os.environ.get(ADMIN_ENV) or DEFAULT_ADMIN_URL)
        self.admin_url: URL = url.set(drivername="postgresql+psycopg")
        self.prefix = f"{prefix}_{secrets.token_hex(4)}"
        self._admin: Engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT",
                                            connect_args={"connect_timeout": 5})
        self._made: list[str] = []
        self._n = 0
        try:
            with self._admin.connect() as conn:
                conn.execute(text("SELECT 1"))
        except OperationalError as exc:
            self._admin.dispose()
            shown = self.admin_url.render_as_string(hide_password=True)
            raise RuntimeError(
                f"no PostgreSQL at {shown} for the tests ({str(exc.orig).strip().splitlines()[0]}): "
                f"`make test` installs and starts one; or point ${ADMIN_ENV} at a server "
                "where this role may create databases") from None

    def url(self, database: str) -> str:
        return self.admin_url.set(database=database).render_as_string(hide_password=False)

    def create(self, suffix: str | None = None, *, template: str | None = None) -> str:
        """A new empty database (or a copy of ``template``); its URL."""
        self._n += 1
        name = f"{self.prefix}_{suffix or self._n}"
        clause = f' TEMPLATE "{template}"' if template else ""
        with self._admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"{clause}'))
        self._made.append(name)
        return self.url(name)

    def drop(self, url_or_name: str) -> None:
        name = make_url(url_or_name).database if "://" in url_or_name else url_or_name
        with self._admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if name in self._made:
            self._made.remove(name)

    def migrated_template(self) -> str:
        """A database at the newest revision, to clone (its name)."""
        from hub.migrate import upgrade

        url = self.create("template")
        upgrade(url, echo=log.debug)
        return make_url(url).database or ""

    @contextmanager
    def clone(self, template: str) -> Iterator[str]:
        """A copy of ``template`` for one test, dropped afterwards."""
        url = self.create(template=template)
        try:
            yield url
        finally:
            self.drop(url)

    def close(self) -> None:
        for name in list(reversed(self._made)):
            try:
                self.drop(name)
            except OperationalError:
                log.warning("could not drop test database %s", name, exc_info=True)
        self._admin.dispose()
