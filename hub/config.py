"""The hub's configuration schema (hub.toml). Loaded with ``tapcast.config.load``."""
from __future__ import annotations

import re

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
    # Where Flask-Limiter counts failed sign-ins (5 a minute per address and per user
    # name): "memory://" is per process, so with N web workers an attacker gets up to N
    # times that; a shared storage such as "redis://host:6379" makes it exact.
    ratelimit_storage: str = "memory://"
    # The content library's files, each once under its sha256 (hub/files.py). With
    # several hub boxes it must be one shared directory.
    files: str = "var/hub/files"
    # Largest file a marketer may upload, in MB (an upload over it is refused whole).
    max_file_mb: int = 100
    # The halls' time zone (IANA name), for content schedules: a window "08:00-10:00"
    # means 8 to 10 there. The preview takes another one when asked.
    timezone: str = "UTC"
    # The hub's Ed25519 signing key (hub.key from `tapcast keys init-hub`): `hub ingest`
    # signs each node's content manifest with it. Without it no manifest is published
    # (nodes keep what they have).
    signing_key: str = "var/hub/hub.key"
    # The address nodes reach `hub web` at, for content files ("" = http://host:port
    # of [hub] above, right for one box; behind a proxy, its URL).
    public_url: str = ""


    def __post_init__(self) -> None:
        """A wrong time zone or files URL would reach every node in its manifest, which
        the node would then refuse: say so at start instead."""
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(self.timezone)
        except (KeyError, ValueError, OSError):
            raise ValueError(f"timezone {self.timezone!r} is not an IANA time zone this "
                             "box knows, such as Europe/Berlin or UTC") from None
        if self.public_url and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?",
                                                self.public_url):
            raise ValueError(f"public_url {self.public_url!r} is not an http(s):// URL "
                             "of hub web, such as https://hub.example.internal")


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
    # With a shared_group, ingest worker N uses "<client_id>-N" (N from 1).
    client_id: str = "tapcast-hub"
    # Events are written in one transaction per batch of at most this many (each
    # commit waits for the disk: 4000 rather than 1000 gave the writer about 4% more
    # under a backlog; live traffic makes small transactions either way).
    batch_size: int = 4000
    # true (default): the ingest checks, decodes and writes events in a process of its
    # own, beside the one holding the MQTT connection, so each has a core (about 2x the
    # events per second of one process; docs/performance.md). false: in a thread of
    # the same process (one core, or where a child process is unwelcome).
    writer_process: bool = True
    # "" (default): one `hub ingest`, MQTT 3.1.1, a plain subscription (any broker,
    # the demo's amqtt included). A name, e.g. "hub": MQTT 5, and the events topic is
    # subscribed as $share/<name>/... so several ingest workers (on one box or many,
    # all writing one database) each get a part of the events; every worker still
    # subscribes to status and state itself (docs/mqtt.md, "Several ingest workers").
    shared_group: str = ""
    # Ingest worker processes `tapcast hub ingest` runs (--workers overrides); more
    # than 1 needs a shared_group.
    workers: int = 1
    # MQTT 5 only (shared_group set): seconds the broker keeps a worker's session (its
    # subscription and queued events) after the worker goes away. While it lasts,
    # Mosquitto keeps handing that worker its share of new events, which wait for it;
    # nodes re-send what is not acked, so a shorter expiry only costs re-sends.
    session_expiry: int = 300


class HubConfig(msgspec.Struct, forbid_unknown_fields=True):
    hub: HubSection = msgspec.field(default_factory=HubSection)
    mqtt: HubMqttSection = msgspec.field(default_factory=HubMqttSection)


