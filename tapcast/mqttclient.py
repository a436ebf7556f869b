"""paho-mqtt client construction shared by node uplink, hub ingest, demo and benchmarks.

Why a helper: every client needs the same things right, and getting one wrong is
silent: paho 2.x callback API version, MQTT 3.1.1 (the demo's embedded amqtt broker
speaks nothing newer; MQTT 5 only where asked for: the hub's shared subscriptions),
TCP_NODELAY (Nagle adds 40-85 ms to each QoS1 round trip), and
for ``mqtts://`` brokers a TLS set-up that really checks the broker (its certificate
chain against the configured CA *and* its host name), which is easy to get subtly
wrong in each caller. So broker URLs are parsed and TLS is configured here only.
"""
from __future__ import annotations

import logging
import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

#: URL scheme -> (TLS?, default port). 8883 is IANA's port for MQTT over TLS.
SCHEMES: dict[str, tuple[bool, int]] = {"mqtt": (False, 1883), "mqtts": (True, 8883)}


@dataclass(frozen=True)
class BrokerUrl:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    #: True for ``mqtts://``: the client must speak TLS and verify the broker.
    tls: bool = False

    @property
    def scheme(self) -> str:
        return "mqtts" if self.tls else "mqtt"

    def __str__(self) -> str:  # never shows credentials: it goes into logs
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def _redacted(url: str) -> str:
    """The URL as it may appear in an error message: with any password masked."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return url
    return url.replace(f":{password}@", ":***@", 1) if password else url


def parse_broker_url(url: str) -> BrokerUrl:
    """``mqtt://[user[:password]@]host[:port]`` (port 1883 by default) or the same with
    ``mqtts://`` for MQTT over TLS (port 8883 by default). ValueError says what is wrong."""
    parts = urlsplit(url.strip())
    if parts.scheme not in SCHEMES:
        got = f"scheme {parts.scheme + '://'!r}" if parts.scheme else "no scheme"
        raise ValueError(f"broker URL {_redacted(url)!r} must look like mqtt://host:port "
                         f"or mqtts://host:port (TLS); got {got}")
    if not parts.hostname:
        raise ValueError(f"broker URL {_redacted(url)!r} has no host: expected "
                         f"{parts.scheme}://host[:port]")
    tls, default_port = SCHEMES[parts.scheme]
    try:
        port = parts.port or default_port
    except ValueError:
        raise ValueError(f"broker URL {_redacted(url)!r} has a bad port") from None
    return BrokerUrl(
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls,
    )


# ------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class TlsFiles:
    """The files a client needs for ``mqtts://``, as named in the node's and the hub's
    ``[mqtt]`` section (``ca_file``, ``cert_file``, ``key_file``); "" means not set."""

    #: PEM bundle of the CA(s) that may sign the broker's certificate. "" trusts the
    #: system's CA store instead (a broker with a certificate from a public CA).
    ca_file: str = ""
    #: PEM client certificate, for a broker that asks for one (``require_certificate``).
    cert_file: str = ""
    #: Its unencrypted PEM private key; "" when it is inside ``cert_file``.
    key_file: str = ""

    def resolved(self, base_dir: str | Path) -> TlsFiles:
        """Relative paths taken from ``base_dir`` (the node resolves them from its
        config file's folder, as it does its ``[keys]``)."""
        def resolve(name: str) -> str:
            return str(Path(base_dir) / name) if name and not Path(name).is_absolute() else name
        return TlsFiles(resolve(self.ca_file), resolve(self.cert_file), resolve(self.key_file))


def _no_key_password() -> str:
    # Without this callback OpenSSL would prompt on a terminal for an encrypted key,
    # and a daemon under systemd has none: it would hang or fail obscurely.
    raise ValueError("the key is encrypted; give an unencrypted key file (mode 0600)")


def tls_context(files: TlsFiles) -> ssl.SSLContext:
    """A client TLS context that verifies the broker: its chain against ``ca_file`` (or
    the system store), and its host name against the URL (``check_hostname``). TLS 1.2
    at least. Reads the files now: ValueError names a file that is missing or wrong."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                             cafile=files.ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"[mqtt] ca_file {files.ca_file!r}: cannot load it as a PEM CA "
                         f"bundle: {_reason(exc)}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if files.key_file and not files.cert_file:
        raise ValueError(f"[mqtt] key_file {files.key_file!r} is set but cert_file is not: "
                         "a client key needs its certificate")
    if files.cert_file:
        try:
            context.load_cert_chain(files.cert_file, files.key_file or None,
                                    password=_no_key_password)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            named = f"cert_file {files.cert_file!r}" + (
                f" / key_file {files.key_file!r}" if files.key_file else "")
            raise ValueError(f"[mqtt] {named}: cannot load the client certificate and "
                             f"key: {_reason(exc)}") from None
    return context


def configure_tls(client: mqtt.Client, broker: BrokerUrl, files: TlsFiles) -> None:
    """Make ``client`` speak TLS to ``broker`` if its URL is ``mqtts://`` (else nothing:
    ``files`` apply to TLS brokers only). Call before ``connect``; ValueError if a file
    is missing or wrong. The files are read on each call, so a client made per
    connection attempt picks up a renewed certificate."""
    if not broker.tls:
        return
    client.tls_set_context(tls_context(files))


def describe_tls_error(exc: BaseException, broker: BrokerUrl, files: TlsFiles) -> str:
    """One line saying why a TLS handshake with ``broker`` failed and what to change;
    ssl's own messages name neither the broker nor the setting."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or _reason(exc)
        if exc.verify_code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, ..._IP_ADDRESS_MISMATCH
            return (f"TLS: the certificate of broker {broker} is not valid for "
                    f"{broker.host!r} ({why}); connect by a name or address the broker's "
                    "certificate lists (subjectAltName)")
        trusted = f"the CA in [mqtt] ca_file {files.ca_file!r}" if files.ca_file \
            else "the system CA store ([mqtt] ca_file is not set)"
        return (f"TLS: broker {broker} presented a certificate not trusted by {trusted} "
                f"({why}); set [mqtt] ca_file to the CA that signed the broker's certificate")
    if isinstance(exc, ssl.SSLError):
        return (f"TLS handshake with broker {broker} failed ({_reason(exc)}); is that port "
                "a TLS listener (mqtts:// usually means port 8883), and does it accept "
                "this client's certificate?")
    return f"cannot reach broker {broker}: {_reason(exc)}"


def tls_close_hint(broker: BrokerUrl, files: TlsFiles) -> str:
    """What to add when a TLS broker closes the connection right after the handshake:
    with TLS 1.3 that is how a refused (or missing) client certificate shows."""
    if not broker.tls:
        return ""
    if not files.cert_file:
        return ("; if this broker requires client certificates (require_certificate), "
                "set [mqtt] cert_file and key_file")
    return (f"; if this broker requires client certificates, check that it trusts the CA "
            f"that signed [mqtt] cert_file {files.cert_file!r}")


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return re.sub(r" \(_ssl\.c:\d+\)$", "", text)  # where in CPython: no help to anyone


# ---------------------------------------------------------------------- clients


def _nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:  # not a TCP socket (e.g. websockets over a proxy)
        log.debug("could not set TCP_NODELAY: %s", exc)


class RoutingClient(mqtt.Client):
    """A paho client for a process that routes every message itself (one ``on_message``,
    never ``message_callback_add``): it skips paho's walk of the per-topic callback
    filters, which costs each received message the same whether any filter is set or
    not (9% of the hub ingest's MQTT process at full rate, docs/performance.md).

    It overrides paho's private ``_handle_on_message`` (paho 2.x); where a paho release
    lacks what it relies on, it behaves exactly as paho's own (``_FAST``)."""

    _FAST = all(hasattr(mqtt.Client, name) for name in ("_handle_on_message", "_easy_log"))

    def message_callback_add(self, sub: str, callback: Any) -> None:
        raise TypeError("RoutingClient routes messages in on_message only")

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        if not self._FAST:
            super()._handle_on_message(message)
            return
        on_message = self.on_message
        if on_message is None:
            return
        with self._in_callback_mutex:
            try:
                on_message(self, self._userdata, message)
            except Exception as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise


def make_client(client_id: str, *, clean_session: bool = True,
                username: str | None = None, password: str | None = None,
                protocol: int = mqtt.MQTTv311,
                client_class: type[mqtt.Client] = mqtt.Client) -> mqtt.Client:
    """A paho 2.x client speaking MQTT 3.1.1 (``protocol=mqtt.MQTTv5`` for MQTT 5: its
    session is set at connect time, ``clean_start`` and a session expiry, so
    ``clean_session`` is ignored) with TCP_NODELAY on every socket it opens.
    For an ``mqtts://`` broker, follow with :func:`configure_tls`. ``client_class``:
    paho's Client or a subclass (RoutingClient)."""
    v5 = protocol == mqtt.MQTTv5
    client = client_class(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=None if v5 else clean_session,
        protocol=protocol,
    )
    client.on_socket_open = _nodelay
    if username is not None:
        client.username_pw_set(username, password)
    return client
