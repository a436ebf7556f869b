"""Configuration: TOML files with environment overrides, typed by msgspec.

One loader serves the node, the hub and the demo, so that a bad file gives the same
clear error everywhere: which file, which key, what was expected.

Environment overrides: ``TAPCAST_<SECTION>__<KEY>=value`` (double underscore between
section and key), for example ``TAPCAST_MQTT__BROKERS='["mqtt://10.0.0.2:1883"]'``.
The value is read as a TOML value when it parses as one, else as a plain string.
"""
from __future__ import annotations

import logging
import os
import tomllib
from pathlib import Path
from typing import Any, TypeVar

import msgspec

log = logging.getLogger(__name__)

ENV_PREFIX = "TAPCAST_"

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or override is wrong; the message says where and how."""


# ---------------------------------------------------------------- node configuration


class NodeSection(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    zone: str = "default"
    data_dir: str = "var/node"
    # Content library TOML (content/library.toml format) that seeds the local store at
    # start. Until signed bundles come from the hub this is how content reaches a node.
    library: str = ""
    # Seconds a BLE session waits for the customer's next request before saying bye.
    idle_timeout: float = 5.0


class NfcSection(msgspec.Struct, forbid_unknown_fields=True):
    # nfcpy device path: "udp:HOST:PORT" in the virtual hall, "usb:054c:06c3" or
    # "tty:AMA0:pn532" on a Pi.
    device: str = "udp:127.0.0.1:54321"
    # Seconds between polls. nfcpy's default is 0.5 s, far too slow for a 500 ms tap
    # budget; a PN532 polls 106A in a few ms, so 20-50 ms costs little power.
    poll_interval: float = 0.02
    # udp driver only: nfcpy waits a hard-coded 1 s for a SENS_RES that on loopback
    # arrives in microseconds; capped so a handset arriving just after a poll is not
    # kept waiting a second. Ignored for usb:/tty: readers.
    sens_res_timeout: float = 0.02
    # Pause after a tap: a phone stays in the field about a second and shows a new
    # random UID on every poll, so without a pause one tap authenticates many times.
    hold_off: float = 0.5


class BleSection(msgspec.Struct, forbid_unknown_fields=True):
    # "bluez" on a Pi (bleak's default backend); "virtual" in the virtual hall (a
    # bumble-based bleak backend on an in-process LocalLink).
    backend: str = "bluez"
    connect_timeout: float = 5.0


class MqttSection(msgspec.Struct, forbid_unknown_fields=True):
    # Tried in order; the node moves to the next one when a broker is unreachable.
    brokers: list[str] = msgspec.field(default_factory=lambda: ["mqtt://127.0.0.1:1883"])
    username: str | None = None
    password: str | None = None
    keepalive: int = 30
    batch_size: int = 200


class KeysSection(msgspec.Struct, forbid_unknown_fields=True):
    # Files written by `tapcast keys` (see tapcast.keys): the node's Ed25519 private
    # key, its hub-signed certificate, and the hub's public key to check handsets.
    node_key: str = "node.key"
    node_cert: str = "node.cert"
    hub_public_key: str = "hub.pub"


class NodeConfig(msgspec.Struct, forbid_unknown_fields=True):
    node: NodeSection
    nfc: NfcSection = msgspec.field(default_factory=NfcSection)
    ble: BleSection = msgspec.field(default_factory=BleSection)
    mqtt: MqttSection = msgspec.field(default_factory=MqttSection)
    keys: KeysSection = msgspec.field(default_factory=KeysSection)


# ----------------------------------------------------------------- hub configuration


class HubSection(msgspec.Struct, forbid_unknown_fields=True):
    # SQLite file path, or a postgresql:// URL when one machine is not enough.
    database: str = "var/hub/hub.db"
    host: str = "127.0.0.1"
    port: int = 8080
    # A node is shown offline when its last status says so, or when nothing was
    # heard from it for this many seconds.
    stale_after: float = 120.0


class HubMqttSection(msgspec.Struct, forbid_unknown_fields=True):
    broker: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: str | None = None
    client_id: str = "tapcast-hub"
    # Events are written in one transaction per batch of at most this many.
    batch_size: int = 1000


class HubConfig(msgspec.Struct, forbid_unknown_fields=True):
    hub: HubSection = msgspec.field(default_factory=HubSection)
    mqtt: HubMqttSection = msgspec.field(default_factory=HubMqttSection)


# ------------------------------------------------------------------------ loading


def _env_overrides(environ: dict[str, str] | os._Environ[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX):]:
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("__")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        out.setdefault(section, {})[key] = value
    return out


def load(kind: type[T], path: str | Path | None = None, *,
         data: dict[str, Any] | None = None,
         environ: dict[str, str] | None = None) -> T:
    """Load a config of type ``kind`` from a TOML file (or a dict), then apply env
    overrides. Raises ConfigError naming the file and the offending key."""
    source = str(path) if path is not None else "<defaults>"
    merged: dict[str, Any] = {}
    if path is not None:
        try:
            merged = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{source}: no such config file; create it or pass --config") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    if data:
        for section, values in data.items():
            merged.setdefault(section, {}).update(values)
    for section, values in _env_overrides(os.environ if environ is None else environ).items():
        if isinstance(merged.get(section, {}), dict):
            merged.setdefault(section, {}).update(values)
    try:
        return msgspec.convert(merged, kind)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def dump(config: Any) -> str:
    """Render a config back to TOML text (for `tapcast demo` to write node.toml files)."""
    lines: list[str] = []
    for section, values in msgspec.to_builtins(config).items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if value is None:
                continue
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return msgspec.json.encode(value).decode()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
