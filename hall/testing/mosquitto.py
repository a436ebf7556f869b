"""A real Mosquitto broker on a free loopback port, for tests, benchmarks and the demo.

Why not the system service: tests need their own broker they can stop and restart
(broker-restart tests) without touching anything else on the machine. TLS listeners
(``tls=``) and whole config files (``Mosquitto.from_conf``, e.g. the shipped
firmware_config/mosquitto.conf with its paths rewritten) run the same way, so the
security set-up is tested on the broker production uses.
"""
from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/bin/mosquitto")


def find_mosquitto() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in MOSQUITTO_PATHS if Path(p).exists()), None)
    if not found:
        raise RuntimeError("mosquitto is not installed: run `make test` (it installs "
                           "Debian's mosquitto) or `apt-get install mosquitto`")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class BrokerTls:
    """A TLS listener's files (PEM): the broker's certificate and key; ``cafile`` only
    to check client certificates, which ``require_certificate`` then demands."""

    certfile: Path
    keyfile: Path
    cafile: Path | None = None
    require_certificate: bool = False

    def conf_lines(self) -> str:
        lines = [f"certfile {self.certfile}", f"keyfile {self.keyfile}"]
        if self.cafile is not None:
            lines.append(f"cafile {self.cafile}")
        if self.require_certificate:
            lines.append("require_certificate true")
        return "\n".join(lines) + "\n"


class TestCa:
    """A throwaway certificate authority for TLS tests: issues broker certificates (for
    given host names and addresses) and client certificates, as PEM files in a folder.
    EC P-256 keys: a whole CA and two certificates take a few milliseconds."""

    __test__ = False  # not a pytest class

    def __init__(self, directory: Path, name: str = "Tapcast test CA") -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(self._name).issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()),
                           critical=False)
            .sign(self._key, _sha256()))
        self.cert_file = self._write(f"{_slug(name)}.crt", self._cert_pem(self._cert))

    def issue(self, name: str, *, hosts: Sequence[str] = (), client: bool = False,
              ) -> tuple[Path, Path]:
        """A certificate for ``name`` signed by this CA, and its key: (cert, key) files.
        ``hosts`` become subjectAltNames (IP addresses or DNS names), which is what a
        client checks the broker's host against; ``client`` makes a client certificate."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._key.public_key()), critical=False))
        if hosts:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(h) for h in hosts]), critical=False)
        cert = builder.sign(self._key, _sha256())
        key_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return (self._write(f"{_slug(name)}.crt", self._cert_pem(cert)),
                self._write(f"{_slug(name)}.key", key_pem, mode=0o600))

    def broker_tls(self, hosts: Sequence[str] = ("127.0.0.1", "localhost"), *,
                   require_certificate: bool = False) -> BrokerTls:
        """Files for a Mosquitto TLS listener reachable at ``hosts``."""
        cert, key = self.issue("broker", hosts=hosts)
        return BrokerTls(cert, key, cafile=self.cert_file,
                         require_certificate=require_certificate)

    @staticmethod
    def _cert_pem(cert: object) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return cert.public_bytes(serialization.Encoding.PEM)  # type: ignore[attr-defined]

    def _write(self, name: str, data: bytes, mode: int = 0o644) -> Path:
        path = self.directory / name
        path.write_bytes(data)
        path.chmod(mode)
        return path


def _sha256() -> object:
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name.lower())


def _general_name(host: str) -> object:
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _run_as_root_line() -> str:
    # Run as root, mosquitto 2 drops to the `mosquitto` user, cannot write the work dir
    # (nor read files under pytest's private tmp dirs) and silently persists nothing.
    return "user root\n" if os.geteuid() == 0 else ""


class Mosquitto:
    """Start/stop/restart one mosquitto process; keeps the port across restarts and
    persists retained messages and sessions to ``workdir`` (as production does).

    ``tls``: the listener speaks TLS only (``url`` is then ``mqtts://``).
    ``extra_conf``: lines appended to the generated config (e.g. a password file)."""

    def __init__(self, workdir: Path, port: int | None = None, *,
                 tls: BrokerTls | None = None, extra_conf: str = "") -> None:
        self._setup(workdir, (port or free_port(),), tls=tls is not None)
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            + (tls.conf_lines() if tls is not None else "")
            + "allow_anonymous true\n"
            + self._common_conf()
            + extra_conf
        )

    def _setup(self, workdir: Path, ports: Sequence[int], *, tls: bool) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = ports[0]
        self.ports: tuple[int, ...] = tuple(ports)
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = self.workdir / "mosquitto.conf"

    @classmethod
    def from_conf(cls, workdir: Path, conf: str, ports: Sequence[int], *,
                  tls: bool = False) -> Mosquitto:
        """A broker run from a whole config text that opens ``ports`` on 127.0.0.1 (the
        first one is ``port``/``url``; ``tls`` if that one is a TLS listener). Adds
        persistence in ``workdir``, a log file there, and ``user root`` when root."""
        broker = cls.__new__(cls)  # not __init__: that writes a config of its own
        broker._setup(workdir, ports, tls=tls)
        broker.conf.write_text(conf.rstrip("\n") + "\n" + broker._common_conf(defaults=False))
        return broker

    def _common_conf(self, *, defaults: bool = True) -> str:
        return (
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            + ("max_queued_messages 100000\nset_tcp_nodelay true\n" if defaults else "")
            + "log_type error\nlog_type warning\n"
            f"log_dest file {self.log_file}\n"
            + _run_as_root_line()
        )

    @property
    def log_file(self) -> Path:
        return self.workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen([find_mosquitto(), "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        waiting = list(self.ports)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                logged = self.log_file.read_text() if self.log_file.exists() else ""
                raise RuntimeError(f"mosquitto exited at start: {err}{logged}")
            try:
                socket.create_connection(("127.0.0.1", waiting[0]), timeout=0.2).close()
                waiting.pop(0)
                if not waiting:
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {waiting} within {timeout}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
