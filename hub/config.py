"""The hub's configuration schema (hub.toml). Loaded with ``tapcast.config.load``."""
from __future__ import annotations

import msgspec

__all__ = ["HubConfig", "HubSection", "HubMqttSection"]


class HubSection(msgspec.Struct, forbid_unknown_fields=True):
    # SQLite file path, shared by `hub web` and `hub ingest` (PostgreSQL, for more than
    # one box, is not supported yet).
    database: str = "var/hub/hub.db"
    # Where `tapcast hub web` (gunicorn) listens; port 0 takes any free port.
    host: str = "127.0.0.1"
    port: int = 8080
    # gunicorn worker processes for `hub web`/`hub serve` (`--workers` overrides). Each
    # answers one request at a time with its own database connection; 2 keep the page
    # responsive while an API client pages through events.
    workers: int = 2
    # A node is shown offline when its last status says so, or when nothing was
    # heard from it for this many seconds.
    stale_after: float = 120.0
    # The event stream's secret (64 hex digits, mode 0600), written by `tapcast keys
    # init-hub` as stream.secret next to the hub authority. `hub ingest` derives each
    # node's stream key from it to check batches and tag acks (docs/mqtt.md).
    stream_secret: str = "var/hub/stream.secret"


class HubMqttSection(msgspec.Struct, forbid_unknown_fields=True):
    # mqtt://host[:1883] (plain TCP: the broker on this box) or mqtts://host[:8883]
    # (TLS: the broker's certificate must be for that host and signed by ca_file's CA).
    broker: str = "mqtt://127.0.0.1:1883"
    # The hub's broker user (the ACL lets it read every node's topics). Keep the
    # password out of a world-readable file: mode 0600, or TAPCAST_MQTT__PASSWORD.
    username: str | None = None
    password: str | None = None
    # TLS, for an mqtts:// broker only (tapcast.mqttclient.TlsFiles); relative paths
    # are taken from the working directory, as [hub] database is. ca_file: PEM CA
    # bundle that signed the broker's certificate ("" = the system's CA store).
    # cert_file/key_file: a client certificate and its unencrypted key, only for a
    # broker that requires one (key_file "" = the key is in cert_file).
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    # The persistent session's client id: two hubs must never share it. A broker with
    # use_username_as_clientid (firmware_config/mosquitto.conf) uses the user name.
    client_id: str = "tapcast-hub"
    # Events are written in one transaction per batch of at most this many.
    batch_size: int = 1000


class HubConfig(msgspec.Struct, forbid_unknown_fields=True):
    hub: HubSection = msgspec.field(default_factory=HubSection)
    mqtt: HubMqttSection = msgspec.field(default_factory=HubMqttSection)


