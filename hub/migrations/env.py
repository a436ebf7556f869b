"""Alembic's environment for the hub: runs on the connection hub.migrate hands it
(``config.attributes["connection"]``), or on ``-x url=...`` when run by the alembic
command for a new revision (``alembic -c hub/migrations/alembic.ini revision
--autogenerate -x url=sqlite:///var/hub/hub.db -m "..."``)."""
from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from hub.schema import metadata

config = context.config


def _run(connection) -> None:  # noqa: ANN001 - a sqlalchemy Connection
    context.configure(connection=connection, target_metadata=metadata,
                      # SQLite cannot ALTER most things: copy-and-swap tables instead
                      render_as_batch=connection.dialect.name == "sqlite",
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("give the database: alembic ... -x url=sqlite:///path/hub.db")
    with create_engine(url).begin() as conn:
        _run(conn)
