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


def _accounts(config_path: Path | None):  # noqa: ANN202 - hub.accounts.Accounts
    """The accounts of the hub database in the config (migrated: else one line saying
    so); closed when the command ends."""
    from hub.accounts import Accounts
    from hub.db import StorageError, open_db

    try:
        db = open_db(_hub_config(config_path).hub.database)
    except StorageError as exc:
        raise click.ClickException(str(exc)) from None
    click.get_current_context().call_on_close(db.close)
    return Accounts(db.engine)


def _clock(ts: float | None) -> str:
    import time

    return "never" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


#: hub.accounts.ROLES, spelled out so `--help` works without importing the hub (a
#: test checks they agree).
_ROLES = ("admin", "operator", "marketer", "auditor", "customer")


@hub.group("user")
def hub_user() -> None:
    """Accounts of the hub page and API (roles: admin, operator, marketer, auditor,
    customer). Every change is written to the audit log (via cli)."""


def _read_password(username: str, from_stdin: bool) -> str:
    """The new password: one line of stdin, or asked twice without echo."""
    from hub.accounts import AccountError, check_password

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt(f"password for {username}", hide_input=True,
                                confirmation_prompt=True)
    try:
        check_password(password, username)
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None
    return password


_PASSWORD_STDIN = click.option("--password-stdin", is_flag=True,
                               help="read the password from the first line of stdin "
                                    "instead of asking twice")


@hub_user.command("create")
@_HUB_CONFIG_OPTION
@click.option("--username", required=True)
@click.option("--role", required=True, type=click.Choice(_ROLES))
@click.option("--no-password", is_flag=True,
              help="an account that cannot sign in with a password (API tokens only)")
@click.option("--display-name", default=None)
@click.option("--email", default=None)
@_PASSWORD_STDIN
def hub_user_create(config_path: Path | None, username: str, role: str, no_password: bool,
                    display_name: str | None, email: str | None, password_stdin: bool) -> None:
    """Create an account; asks for its password twice (there is never a default one).
    The first admin of a new hub is made this way."""
    from hub.accounts import AccountError, Actor, check_username

    accounts = _accounts(config_path)
    try:
        check_username(username)
        if accounts.get_user(username) is not None:
            raise AccountError(f"user {username!r} exists")
        password = None if no_password else _read_password(username, password_stdin)
        accounts.create_user(Actor.cli(), username, role, password=password,
                             display_name=display_name, email=email)
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"user {username!r} ({role}) created")


@hub_user.command("list")
@_HUB_CONFIG_OPTION
def hub_user_list(config_path: Path | None) -> None:
    """Every account: name, role, whether it can sign in with a password, last sign-in."""
    users = _accounts(config_path).list_users()
    if not users:
        click.echo("no users: make the first admin with `tapcast hub user create "
                   "--username NAME --role admin`")
    for user in users:
        state = "disabled" if user.disabled else "enabled"
        password = "password" if user.has_password else "no password"
        click.echo(f"{user.username}\t{user.role}\t{state}\t{password}\t"
                   f"last sign-in {_clock(user.last_login)}")


def _update_user(config_path: Path | None, username: str, done: str, **changes: object) -> None:
    """One audited change to an account from the command line (via cli), or its error."""
    from hub.accounts import AccountError, Actor

    try:
        _accounts(config_path).update_user(Actor.cli(), username, **changes)  # type: ignore[arg-type]
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"user {username!r} {done}")


@hub_user.command("set-role")
@_HUB_CONFIG_OPTION
@click.argument("username")
@click.argument("role", type=click.Choice(_ROLES))
def hub_user_set_role(config_path: Path | None, username: str, role: str) -> None:
    """Change a role; its sessions and tokens get the new role's powers at once."""
    _update_user(config_path, username, f"is now {role}", role=role)


@hub_user.command("disable")
@_HUB_CONFIG_OPTION
@click.argument("username")
def hub_user_disable(config_path: Path | None, username: str) -> None:
    """Disable an account: its sessions and tokens stop at once (it is kept, for the
    audit log)."""
    _update_user(config_path, username, "disabled", disabled=True)


@hub_user.command("enable")
@_HUB_CONFIG_OPTION
@click.argument("username")
def hub_user_enable(config_path: Path | None, username: str) -> None:
    """Enable a disabled account again."""
    _update_user(config_path, username, "enabled", disabled=False)


@hub_user.command("set-password")
@_HUB_CONFIG_OPTION
@click.argument("username")
@_PASSWORD_STDIN
def hub_user_set_password(config_path: Path | None, username: str,
                          password_stdin: bool) -> None:
    """Set a new password (asked twice), e.g. for an admin who lost theirs."""
    from hub.accounts import AccountError, Actor

    accounts = _accounts(config_path)
    try:
        if accounts.get_user(username) is None:
            raise AccountError(f"no user {username!r}")
        accounts.set_password(Actor.cli(), username, _read_password(username, password_stdin))
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"password of {username!r} set")


@hub.group("token")
def hub_token() -> None:
    """Personal API tokens for /api/v1 (also made on the hub page, My tokens). Stored
    hashed in the hub database; the value is shown only once."""


@hub_token.command("create")
@_HUB_CONFIG_OPTION
@click.option("--user", "username", required=True, help="whose token it is")
@click.option("--name", required=True, help="what uses it, e.g. grafana")
@click.option("--scopes", required=True,
              help="comma-separated permissions, within the user's role (e.g. "
                   "nodes:read,stats:read), or 'all' for everything the role may do")
@click.option("--expires-days", type=click.IntRange(1, 3650), default=None,
              help="valid for this many days (default: until revoked)")
def hub_token_create(config_path: Path | None, username: str, name: str, scopes: str,
                     expires_days: int | None) -> None:
    """Create a token and print it once (only its hash is kept)."""
    import time

    from hub.accounts import AccountError, Actor

    expires = None if expires_days is None else time.time() + expires_days * 86400.0
    try:
        token, value = _accounts(config_path).create_token(Actor.cli(), username, name,
                                                           scopes, expires_at=expires)
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(value)
    click.echo(f"token {name!r} of {username} (id {token.id}, scopes "
               f"{' '.join(token.scopes)}) created; it is shown only this once. Send it as "
               "'Authorization: Bearer <token>'.", err=True)


@hub_token.command("list")
@_HUB_CONFIG_OPTION
@click.option("--user", "username", default=None, help="only this user's tokens")
def hub_token_list(config_path: Path | None, username: str | None) -> None:
    """Ids, owners, names, scopes and dates of the tokens (never their values)."""
    tokens = _accounts(config_path).list_tokens(username)
    if not tokens:
        click.echo("no tokens: create one with `tapcast hub token create --user NAME "
                   "--name NAME --scopes all`")
    for t in tokens:
        state = f"revoked {_clock(t.revoked_at)}" if t.revoked_at else (
            f"expires {_clock(t.expires_at)}" if t.expires_at else "active")
        click.echo(f"{t.id}\t{t.username}\t{t.name}\t{' '.join(t.scopes)}\t"
                   f"created {_clock(t.created_at)}\tlast used {_clock(t.last_used)}\t{state}")


@hub_token.command("revoke")
@_HUB_CONFIG_OPTION
@click.argument("token_id")
def hub_token_revoke(config_path: Path | None, token_id: str) -> None:
    """Revoke a token by its id (`token list`): it stops at once."""
    from hub.accounts import AccountError, Actor

    try:
        token = _accounts(config_path).revoke_token(Actor.cli(), token_id)
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"token {token.name!r} of {token.username} ({token.id}) revoked")


@main.group()
def content() -> None:
    """The hub's content library (the same checks as the hub page's uploads)."""


@content.command("import")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
@_HUB_CONFIG_OPTION
def content_import(directory: Path, config_path: Path | None) -> None:
    """Bring DIRECTORY/library.toml (and the files it names) into the hub's library:
    new items are created, changed ones get a new version or a new placement, the rest
    is left alone, so importing twice changes nothing. Every item is checked before
    anything is written; a refused one stops the import with what is wrong."""
    from hub.accounts import Actor
    from hub.content import ContentError, ContentLibrary, import_directory
    from hub.db import StorageError, open_db
    from hub.files import FileStore

    config = _hub_config(config_path)
    try:
        db = open_db(config.hub.database)
    except StorageError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        library = ContentLibrary(db.engine, FileStore(config.hub.files),
                                 max_file_size=config.hub.max_file_mb * 1_000_000)
        report = import_directory(library, directory, Actor.cli())
    except ContentError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        db.close()
    for what in ("created", "revised", "placed", "unchanged"):
        keys = getattr(report, what)
        if keys:
            click.echo(f"{what}: {', '.join(keys)}")
    click.echo(f"content import: {len(report.created)} created, {len(report.revised)} "
               f"revised, {len(report.placed)} placed, {len(report.unchanged)} unchanged")


@main.group()
def handset() -> None:
    """The handset: the app customers hold."""


#: What `tapcast handset app` prints once its window is drawn and its radio is on.
APP_READY_PREFIX = "handset app ready"


@handset.command("app")
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("var/handset"),
              show_default=True, help="where the phone keeps its keys, inbox and rules")
@click.option("--hub", "hub_url", default="", metavar="URL",
              help="the hub, for signing in or registering and for display codes "
                   "(e.g. http://127.0.0.1:8080)")
@click.option("--ble", "ble", default=None, metavar="ADAPTER",
              help="the phone's BLE radio: bumble:<transport>, e.g. "
                   "bumble:tcp-client:127.0.0.1:PORT (a controller of the hall's air)")
@click.option("--display", "displays", multiple=True, metavar="NAME=DEVICE",
              help="a hall display to offer on the Tap screen: its name and its reader's "
                   "nfcpy device (udp:127.0.0.1:PORT); repeat for more")
@click.option("--credentials", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="hub-signed handset credentials (`tapcast keys handset --out DIR`) to "
                   "install instead of signing in")
@click.option("--exit-when-ready", is_flag=True, hidden=True,
              help="close once ready (start-up checks and benchmarks)")
def handset_app(data_dir: Path, hub_url: str, ble: str | None, displays: tuple[str, ...],
                credentials: Path | None, exit_when_ready: bool) -> None:
    """The Kivy app customers hold (a window; on a desktop, taps are simulated). Prints
    "handset app ready in S s" once it is drawn and its radio is on."""
    import asyncio
    import time

    started = time.monotonic()
    from handset_app.screens import parse_display  # no Kivy yet: options first

    try:
        offered = [parse_display(text) for text in displays]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--display") from None
    adapter_transport = None
    if ble is not None:
        from tapcast.radio import parse_ble_adapter

        try:
            spec = parse_ble_adapter(ble if ble.startswith(("bumble:", "bluez")) else
                                     f"bumble:{ble}")
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--ble") from None
        if spec.kind != "bumble":
            raise click.BadParameter("the simulated phone serves GATT with bumble: give "
                                     "bumble:<transport>", param_hint="--ble")
        adapter_transport = spec.target
    asyncio.run(_run_handset_app(data_dir, hub_url, adapter_transport, offered, credentials,
                                 exit_when_ready, started))


async def _run_handset_app(data_dir: Path, hub_url: str, transport: str | None,
                           displays: list, credentials: Path | None,  # type: ignore[type-arg]
                           exit_when_ready: bool, started: float) -> None:
    import asyncio
    import time

    from handset_app.hubclient import HubClient
    from handset_app.phone import Phone
    from tapcast.keys import KeyFileError, load_handset_credentials

    # the hub this phone signed in with (its token), unless --hub names another one
    hub_client = HubClient.load(data_dir)
    if hub_url and (hub_client is None or hub_client.url != hub_url.rstrip("/")):
        try:
            hub_client = HubClient(hub_url)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--hub") from None
    phone = Phone(data_dir)
    if credentials is not None:
        try:
            phone.install_credentials(load_handset_credentials(credentials))
        except (KeyFileError, OSError, ValueError) as exc:
            raise click.ClickException(f"--credentials: {exc}") from None
    adapter = None
    if transport is not None:
        from tapcast.radio.bumble import HciAdapter

        adapter = HciAdapter(transport, name="tapcast-app")
    from handset_app.app import TapcastApp, run_app  # Kivy: the window opens from here

    app = TapcastApp(phone, ble_adapter=adapter, displays=displays, hub_client=hub_client,
                     hub_url=hub_client.url if hub_client is not None else hub_url)

    async def announce() -> None:
        await app.ready.wait()
        click.echo(f"{APP_READY_PREFIX} in {time.monotonic() - started:.2f} s "
                   f"({phone.credentials.handset_id if phone.credentials else 'not signed in'},"
                   f" {len(displays)} display(s))")
        if exit_when_ready:
            app.stop()

    waiter = asyncio.ensure_future(announce())
    try:
        await run_app(app)
    finally:
        waiter.cancel()


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
@click.option("--app", "app", is_flag=True,
              help="Also open the handset app's window (`tapcast handset app`) as one more "
                   "handset, with the hall's displays on its Tap screen (needs a display).")
def demo(nodes: int, handsets: int, duration: float, broker: str | None, hub_port: int,
         keep_hub: bool, workdir: Path, seed: int | None, database: str | None,
         app: bool) -> None:
    """The whole system on one machine without radios: the virtual hall."""
    from hall.demo import DemoError, run_demo

    try:
        summary = run_demo(nodes=nodes, handsets=handsets, duration=duration, broker=broker,
                           hub_port=hub_port, workdir=workdir, seed=seed, keep_hub=keep_hub,
                           database=database, app=app)
    except (DemoError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{exc.filename or workdir}: {exc.strerror or exc}") from None
    sys.exit(0 if summary.ok else 1)


if __name__ == "__main__":
    main()
