"""The `tapcast` command: node, hub, demo. Each part is imported only when its command
runs, so a Pi with only the `node` extra never needs Flask, and the hub never needs nfcpy."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from tapcast.config import ConfigError

log = logging.getLogger(__name__)


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose
    handler = logging.StreamHandler()
    # The level goes on the handler too: nfcpy sets its own logger to INFO when imported.
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


@click.group()
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Tapcast: tap a phone on a hall display, get local content over BLE."""
    _setup_logging(verbose)


@main.group()
def node() -> None:
    """The Pi daemon behind a hall display."""


@node.command("run")
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True,
              help="node.toml (see firmware_config/node.toml)")
def node_run(config_path: Path) -> None:
    """Serve taps: NFC authentication, BLE push, outbox to the hub. Prints one line
    when it serves taps; SIGTERM or Ctrl-C stops it cleanly."""
    import asyncio

    from node.config import NodeConfig
    from node.daemon import NodeDaemon, NodeStartError, run_until_signalled
    from tapcast import config as cfg
    from tapcast.keys import KeyFileError

    try:
        conf = cfg.load(NodeConfig, config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        daemon = NodeDaemon(conf, base_dir=config_path.parent)
    except KeyFileError as exc:
        raise click.ClickException(
            f"{exc}\nProvision this node's keys with: tapcast keys node --hub-dir HUB_KEYS "
            f"--out {config_path.parent} --id {conf.node.id} --zone {conf.node.zone}") from None
    except (ConfigError, OSError, ValueError) as exc:
        raise click.ClickException(f"{config_path}: {exc}") from None
    try:
        asyncio.run(run_until_signalled(daemon, lambda line: click.echo(line)))
    except NodeStartError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        pass


@main.group()
def keys() -> None:
    """The hub's signing authority and the certificates it issues."""


@keys.command("init-hub")
@click.option("--dir", "directory", type=click.Path(path_type=Path), required=True)
def keys_init_hub(directory: Path) -> None:
    """Create the hub authority (hub.key, hub.pub) and the event stream's secret
    (stream.secret). Keep hub.key offline; copy stream.secret to the box that runs
    `tapcast hub ingest` ([hub] stream_secret)."""
    from tapcast.keys import HubAuthority
    from tapcast.streamkeys import STREAM_SECRET_FILE, write_stream_secret

    if (directory / "hub.key").exists():
        raise click.ClickException(f"{directory / 'hub.key'} exists; refusing to replace it")
    if (directory / STREAM_SECRET_FILE).exists():
        raise click.ClickException(f"{directory / STREAM_SECRET_FILE} exists; refusing to "
                                   "replace it")
    HubAuthority.generate().save(directory)
    write_stream_secret(directory)
    click.echo(f"hub authority and stream secret written to {directory}")


@keys.command("node")
@click.option("--hub-dir", type=click.Path(path_type=Path), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="folder of the node's node.toml")
@click.option("--id", "node_id", required=True)
@click.option("--zone", required=True)
@click.option("--days", default=365, show_default=True, help="certificate lifetime")
@click.option("--force", is_flag=True, help="replace an existing node key (the old one stops working)")
def keys_node(hub_dir: Path, out: Path, node_id: str, zone: str, days: int, force: bool) -> None:
    """Generate a node key and a hub-signed node certificate."""
    import time

    from tapcast.config import KeysSection
    from tapcast.keys import HubAuthority, KeyFileError, write_node_credentials
    from tapcast.streamkeys import STREAM_SECRET_FILE, load_stream_secret, write_node_stream_key

    existing = out / KeysSection().node_key
    if existing.exists() and not force:
        raise click.ClickException(
            f"{existing} exists: this node already has a key. Pass --force to replace it "
            "(its current certificate then no longer matches), or choose another --out")
    try:
        # Both hub files read before anything is written: no half-provisioned node.
        authority = HubAuthority.load(hub_dir)
        secret = load_stream_secret(hub_dir / STREAM_SECRET_FILE)
        write_node_credentials(out, authority, node_id, zone, time.time() + days * 86400)
        write_node_stream_key(out, secret, node_id, KeysSection().stream_key)
    except (KeyFileError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"node {node_id} ({zone}) credentials written to {out}")


@keys.command("handset")
@click.option("--hub-dir", type=click.Path(path_type=Path), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--id", "handset_id", required=True, help="pseudonymous handset id")
@click.option("--days", default=365, show_default=True, help="certificate lifetime")
def keys_handset(hub_dir: Path, out: Path, handset_id: str, days: int) -> None:
    """Generate a handset key and a hub-signed handset certificate."""
    import time

    from tapcast.keys import HubAuthority, KeyFileError, write_handset_credentials

    try:
        write_handset_credentials(out, HubAuthority.load(hub_dir), handset_id,
                                  time.time() + days * 86400)
    except (KeyFileError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"handset {handset_id} credentials written to {out}")


@main.group()
def hub() -> None:
    """The hub: web (gunicorn workers), MQTT ingest, or both on one box."""


from typing import TYPE_CHECKING  # noqa: E402 - kept within the hub section of this file

if TYPE_CHECKING:  # hub modules load only when a hub command runs (they need Flask)
    from hub.config import HubConfig

_HUB_CONFIG_OPTION = click.option(
    "--config", "config_path", type=click.Path(path_type=Path), default=None,
    help="hub.toml; embedded defaults when omitted")
_HUB_WORKERS_OPTION = click.option(
    "--workers", type=int, default=None, help="gunicorn worker processes (default: [hub] workers)")


def _hub_config(config_path: Path | None) -> HubConfig:
    from hub.config import HubConfig
    from tapcast import config as cfg

    try:
        return cfg.load(HubConfig, config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@hub.command("web")
@_HUB_CONFIG_OPTION
@_HUB_WORKERS_OPTION
def hub_web(config_path: Path | None, workers: int | None) -> None:
    """Serve the operator page and /api/v1 with gunicorn workers (no MQTT). Prints
    "hub web on URL (N workers)" when it listens; SIGTERM or Ctrl-C stops it."""
    from hub.run import run_web

    run_web(_hub_config(config_path), workers=workers)


@hub.command("ingest")
@_HUB_CONFIG_OPTION
@click.option("--workers", type=int, default=None,
              help="ingest worker processes on the shared subscription (default: [mqtt] "
              "workers; more than 1 needs [mqtt] shared_group)")
@click.option("--worker", type=int, default=None,
              help="run as this one worker number (client id <client_id>-N), e.g. one "
              "per systemd unit; not with --workers")
def hub_ingest(config_path: Path | None, workers: int | None, worker: int | None) -> None:
    """Store what nodes publish over MQTT and ack it; run exactly one per MQTT client
    id. Prints "hub ingest subscribed at ..." when subscribed (each worker does), and
    keeps retrying while the broker is away; SIGTERM or Ctrl-C stops it after storing
    what it queued. With --workers N, a worker that dies is started again."""
    from hub.run import run_ingest

    if workers is not None and worker is not None:
        raise click.UsageError("give --workers (fork N workers) or --worker (be worker N), "
                               "not both")
    run_ingest(_hub_config(config_path), workers=workers, worker=worker)


@hub.command("serve")
@_HUB_CONFIG_OPTION
@_HUB_WORKERS_OPTION
def hub_serve(config_path: Path | None, workers: int | None) -> None:
    """Web and ingest together, for one box (what `hub web` plus `hub ingest` do).
    SIGTERM or Ctrl-C stops both."""
    from hub.run import run_serve

    run_serve(_hub_config(config_path), workers=workers)


@hub.group("db")
def hub_db() -> None:
    """The hub database's schema (SQLite file or PostgreSQL URL, [hub] database)."""


@hub_db.command("upgrade")
@_HUB_CONFIG_OPTION
def hub_db_upgrade(config_path: Path | None) -> None:
    """Create the tables, or migrate them to this hub's schema (also converts a SQLite
    file written before migrations). The hub's processes refuse a database that is not
    migrated. Safe to run again, and from several boxes at once."""
    from hub.run import upgrade_database

    upgrade_database(_hub_config(config_path), echo=click.echo)


@hub.group("token")
def hub_token() -> None:
    """Interim API tokens for /api/v1 and the operator page (users and roles come
    later). Stored hashed next to the hub database; the value is shown only once."""


def _token_store(config_path: Path | None):  # noqa: ANN202 - hub.tokens.TokenStore
    from hub.tokens import TokenError, token_store

    try:
        return token_store(_hub_config(config_path).hub.database)
    except TokenError as exc:
        raise click.ClickException(str(exc)) from None


@hub_token.command("create")
@_HUB_CONFIG_OPTION
@click.option("--name", required=True, help="who or what uses it, e.g. alice or grafana")
def hub_token_create(config_path: Path | None, name: str) -> None:
    """Create a token and print it once (only its hash is kept)."""
    from hub.tokens import TokenError

    store = _token_store(config_path)
    try:
        token = store.create(name)
    except (TokenError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(token)
    click.echo(f"token {name!r} created; it is shown only this once. Send it as "
               "'Authorization: Bearer <token>', or paste it into the hub page's sign-in "
               "form.", err=True)


@hub_token.command("list")
@_HUB_CONFIG_OPTION
def hub_token_list(config_path: Path | None) -> None:
    """Names and creation times of the tokens (never their values)."""
    import time

    from hub.tokens import TokenError

    try:
        records = _token_store(config_path).records()
    except TokenError as exc:
        raise click.ClickException(str(exc)) from None
    if not records:
        click.echo("no tokens: create one with `tapcast hub token create --name NAME`")
    for record in records:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.created))
        click.echo(f"{record.name}\tcreated {created} UTC")


@hub_token.command("revoke")
@_HUB_CONFIG_OPTION
@click.argument("name")
def hub_token_revoke(config_path: Path | None, name: str) -> None:
    """Revoke a token: API requests and page sessions using it stop at once."""
    from hub.tokens import TokenError

    try:
        _token_store(config_path).revoke(name)
    except (TokenError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"token {name!r} revoked")


@main.command()
@click.option("--nodes", default=3, show_default=True, help="Simulated nodes (hall displays), each its own process.")
@click.option("--handsets", default=5, show_default=True, help="Simulated handsets tapping.")
@click.option("--duration", default=30.0, show_default=True, help="Seconds to run (Ctrl-C stops early).")
@click.option("--broker", default=None,
              help="mqtt://host:port of a running broker, or 'embedded' for the embedded "
                   "amqtt broker; by default the demo starts Mosquitto (amqtt when Mosquitto "
                   "is not installed).")
@click.option("--hub-port", default=8080, show_default=True, help="Hub web port (0 picks a free one).")
@click.option("--keep-hub", is_flag=True, help="Keep the hub (and its page) up after the run until Ctrl-C.")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("var/demo"), show_default=True)
@click.option("--seed", default=None, type=int, help="Random seed for reproducible tapping.")
@click.option("--database", default=None, metavar="URL",
              help="The hub's database, e.g. postgresql://user@host/tapcast (migrated "
                   "first); by default a new SQLite file in the run's folder.")
def demo(nodes: int, handsets: int, duration: float, broker: str | None, hub_port: int,
         keep_hub: bool, workdir: Path, seed: int | None, database: str | None) -> None:
    """The whole system on one machine without radios: the virtual hall."""
    from hall.demo import DemoError, run_demo

    try:
        summary = run_demo(nodes=nodes, handsets=handsets, duration=duration, broker=broker,
                           hub_port=hub_port, workdir=workdir, seed=seed, keep_hub=keep_hub,
                           database=database)
    except (DemoError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{exc.filename or workdir}: {exc.strerror or exc}") from None
    sys.exit(0 if summary.ok else 1)


if __name__ == "__main__":
    main()
