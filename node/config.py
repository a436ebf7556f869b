"""The node's configuration schema (node.toml). Loaded with ``tapcast.config.load``."""
from __future__ import annotations

import msgspec

from tapcast.config import KeysSection

__all__ = ["NodeConfig", "NodeSection", "NfcSection", "BleSection", "MqttSection", "KeysSection",
           "DisplaySection"]


class NodeSection(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    zone: str = "default"
    data_dir: str = "var/node"
    # Content library TOML (content/library.toml format) that seeds the local store at
    # start, until the node has applied a signed manifest from the hub (node.sync); from
    # then on the hub's content is kept across restarts and this file is not read.
    library: str = ""
    # Seconds a BLE session waits for the customer's next request before saying bye.
    idle_timeout: float = 5.0
    # The hall's time zone (IANA, e.g. "Europe/Berlin"): content schedules ("08:00-10:00")
    # run on its clock. "" = the hub's [hub] timezone. Reported to the hub, which signs
    # this node's manifests with it.
    timezone: str = ""


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
    # The BLE adapter, named as bumble names transports (see tapcast.radio): "bluez"
    # (or "bluez:hci1") on a Pi, bleak's BlueZ backend; "bumble:tcp-client:HOST:PORT"
    # in the virtual hall (a controller of the hall's virtual BLE air).
    adapter: str = "bluez"
    connect_timeout: float = 5.0


class MqttSection(msgspec.Struct, forbid_unknown_fields=True):
    # Tried in order; the node moves to the next one when a broker is unreachable.
    # mqtt://host[:1883] is plain TCP; mqtts://host[:8883] is TLS, and the broker must
    # then present a certificate for that host signed by ca_file's CA.
    brokers: list[str] = msgspec.field(default_factory=lambda: ["mqtt://127.0.0.1:1883"])
    # Per-node broker credentials (the broker's ACL keeps this user to its own topics).
    # Keep the password out of a world-readable file: mode 0600, or the environment
    # (TAPCAST_MQTT__PASSWORD). A user or password in a broker URL overrides these.
    username: str | None = None
    password: str | None = None
    keepalive: int = 30
    batch_size: int = 200
    # TLS, for mqtts:// brokers only (tapcast.mqttclient.TlsFiles). Relative paths are
    # taken from this config file's folder, as [keys] are. ca_file: PEM CA bundle that
    # signed the broker's certificate ("" = the system's CA store). cert_file/key_file:
    # a client certificate and its unencrypted key, only for a broker that requires one
    # (key_file "" = the key is in cert_file).
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""


class DisplaySection(msgspec.Struct, forbid_unknown_fields=True):
    # The hall display page for the kiosk browser beside the reader (node/display.py),
    # also the WLAN server large items are fetched from.
    enabled: bool = True
    # Where it listens: the kiosk browser opens http://host:port/. For the WLAN path
    # phones must reach it too: listen on the hall WLAN's address (or 0.0.0.0).
    host: str = "127.0.0.1"
    port: int = 8081
    # Seconds each item of the loop stays on screen.
    slot_seconds: float = 8.0
    # The address phones fetch large items from ("" = http://host:port).
    public_url: str = ""
    # Handsets without NFC: the page shows a code (digits and QR) the signed-in app
    # presents through the hub, new every this many seconds and after each use; 0: no
    # codes (docs/protocol.md, "Without NFC").
    code_seconds: float = 60.0


class NodeConfig(msgspec.Struct, forbid_unknown_fields=True):
    node: NodeSection
    nfc: NfcSection = msgspec.field(default_factory=NfcSection)
    ble: BleSection = msgspec.field(default_factory=BleSection)
    mqtt: MqttSection = msgspec.field(default_factory=MqttSection)
    keys: KeysSection = msgspec.field(default_factory=KeysSection)
    display: DisplaySection = msgspec.field(default_factory=DisplaySection)


