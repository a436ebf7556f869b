"""The hub's configuration schema (hub.toml). Loaded with ``tapcast.config.load``."""
from __future__ import annotations

import msgspec

__all__ = ["HubConfig", "HubSection", "HubMqttSection"]


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


