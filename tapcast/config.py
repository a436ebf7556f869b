"""Configuration: TOML files with environment overrides, typed by msgspec.

One loader serves the node, the hub and the demo, so that a bad file gives the same
clear error everywhere: which file, which key, what was expected. Each part owns its
schema (``node.config.NodeConfig``, ``hub.config.HubConfig``); only sections that
``tapcast/`` itself reads (the credential file names, for ``tapcast.keys``) live here.

Environment overrides: ``TAPCAST_<SECTION>__<KEY>=value`` (double underscore between
section and key), for example ``TAPCAST_MQTT__BROKERS='["mqtt://10.0.0.2:1883"]'``.
The value is read as a TOML value when it parses as one, else as a plain string.
"""
from __future__ import annotations

import logging
import os
import re
import tomllib
from pathlib import Path
from typing import Any, TypeVar

import msgspec

log = logging.getLogger(__name__)

ENV_PREFIX = "TAPCAST_"

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or override is wrong; the message says where and how."""


# ------------------------------------------------------ shared sections


class KeysSection(msgspec.Struct, forbid_unknown_fields=True):
    # Files written by `tapcast keys` (see tapcast.keys): the node's Ed25519 private
    # key, its hub-signed certificate, and the hub's public key to check handsets.
    node_key: str = "node.key"
    node_cert: str = "node.cert"
    hub_public_key: str = "hub.pub"
    # The node's key for the authenticated event stream (tapcast.streamkeys): batches
    # are tagged with it and only acks tagged with it are obeyed.
    stream_key: str = "stream.key"


# ------------------------------------------------------------------------ loading


def _env_overrides(environ: dict[str, str] | os._Environ[str]
                   ) -> dict[str, dict[str, tuple[Any, str]]]:
    """{section: {key: (value read as TOML, raw text)}} from TAPCAST_<SECTION>__<KEY>."""
    out: dict[str, dict[str, tuple[Any, str]]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX):]:
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("__")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        out.setdefault(section, {})[key] = (value, raw)
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
    overrides = _env_overrides(os.environ if environ is None else environ)
    for section, values in overrides.items():
        if isinstance(merged.get(section, {}), dict):
            merged.setdefault(section, {}).update({k: v for k, (v, _raw) in values.items()})
    first_error: msgspec.ValidationError | None = None
    for _attempt in range(1 + sum(len(v) for v in overrides.values())):
        try:
            return msgspec.convert(merged, kind)
        except msgspec.ValidationError as exc:
            first_error = first_error or exc
            # TAPCAST_MQTT__PASSWORD=123456 reads as the integer 123456; where the
            # setting is text, the override's raw text is what was meant.
            found = re.search(r"at `\$\.(\w+)\.(\w+)`", str(exc))
            value, raw = overrides.get(found[1], {}).get(found[2], ("", "")) if found else ("", "")
            if not found or isinstance(value, str) or merged[found[1]][found[2]] == raw:
                break
            merged[found[1]][found[2]] = raw
    raise ConfigError(f"{source}: {first_error}") from None


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
