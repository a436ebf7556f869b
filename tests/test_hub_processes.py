"""The hub as deployed: `tapcast hub web` (gunicorn workers), `tapcast hub ingest` and
`tapcast hub serve` as real processes against a real Mosquitto; `create_app` opens no
MQTT; each start-up error is one line with no traceback."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from hall.testing.hub import HubProcess, api_token, hub_config
from hall.testing.mqtt import NodePublisher
from hall.testing.mosquitto import Mosquitto, free_port
from tapcast import config as cfg
from tapcast.protocol.mqtt import Event, EventBatch

pytestmark = pytest.mark.slow

TIMEOUT = 15.0


# ------------------------------------------------------------------ helpers


#: The API token of the hub the current test's write_config describes.
TOKEN: dict[str, str] = {}


def write_config(tmp_path: Path, broker: str, **hub: Any) -> Path:
    """hub.toml for a test, and an API token for that hub (``get`` sends it)."""
    path = tmp_path / "hub.toml"
    config = hub_config(tmp_path / "var" / "hub.db", broker, **hub)
    path.write_text(cfg.dump(config))
    TOKEN["value"] = api_token(config)
    return path


def batch(node_id: str, seqs: range) -> EventBatch:
    return EventBatch(node_id=node_id, epoch="e1", low=1, first=seqs[0], last=seqs[-1], events=[
        Event(id=uuid.uuid4().hex, seq=s, kind="tap", ts=1_700_000_000.0 + s,
              data={"handset_id": "h1"}) for s in seqs])


def get(url: str) -> tuple[Any, dict[str, str]]:
    request = urllib.request.Request(url, headers={
        "Authorization": f"Bearer {TOKEN.get('value', '')}"})
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        return json.load(response), dict(response.headers)


def children(pid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(entry))
    return out


def broker_connections(pid: int, port: int) -> int:
    """Established TCP connections from process ``pid`` to the broker's ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port and fields[3] == "01":  # 01: ESTABLISHED
                inodes.add(fields[9])
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        count += target.startswith("socket:[") and target[8:-1] in inodes
    return count


def no_traceback(*procs: HubProcess) -> None:
    for proc in procs:
        text = "\n".join(proc.stdout + proc.stderr)
        assert "Traceback" not in text, text


# -------------------------------------------------------------------- tests


def test_web_workers_and_one_ingest_store_each_event_once(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    config = write_config(tmp_path, mosquitto.url)
    with HubProcess("ingest", config) as ingest, \
            HubProcess("web", config, "--workers", "3") as web:
        ingest.wait_line("hub ingest subscribed at mqtt://127.0.0.1:")
        ready = web.wait_line("hub web on http://127.0.0.1:")
        assert ready.endswith("(3 workers)")
        url = ready.split()[3]

        node = NodePublisher(mosquitto.url, tmp_path / "var" / "stream.secret", timeout=TIMEOUT)
        try:
            for node_id in ("n1", "n2"):
                sent = [batch(node_id, range(first, first + 10)) for first in range(1, 41, 10)]
                for b in sent:
                    node.publish_batch(b)
                for b in sent[1:3]:  # re-sent (the same events): duplicates
                    node.publish_batch(b)
            for node_id in ("n1", "n2"):
                node.wait_acked(node_id, 40)
        finally:
            node.close()

        stats, _ = get(f"{url}/api/v1/stats")
        assert stats["events"]["total"] == 80
        assert stats["ingest"] is None  # the web app runs no ingest
        for node_id in ("n1", "n2"):
            listing, _ = get(f"{url}/api/v1/events?node_id={node_id}&limit=500")
            assert [e["seq"] for e in listing["events"]] == list(range(40, 0, -1))
        nodes, _ = get(f"{url}/api/v1/nodes")
        assert {n["node_id"]: n["acked_seq"] for n in nodes["nodes"]} == {"n1": 40, "n2": 40}

        # Requests are answered by the gunicorn workers: 3 children of the web process.
        deadline = time.monotonic() + TIMEOUT
        while len(workers := children(web.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(workers) == 3
        answered_by: set[int] = set()
        with ThreadPoolExecutor(6) as pool:
            while len(answered_by) < 2 and time.monotonic() < deadline:
                for _, headers in pool.map(get, [f"{url}/api/v1/nodes"] * 12):
                    answered_by.add(int(headers["X-Tapcast-Worker"]))
        assert len(answered_by) >= 2 and answered_by <= workers

        # Only the ingest talks to the broker, over one connection that was never lost.
        assert broker_connections(ingest.pid, mosquitto.port) == 1
        assert sum(broker_connections(pid, mosquitto.port)
                   for pid in {web.pid, *workers}) == 0
        assert [line for line in ingest.stdout if "subscribed" in line or "lost" in line] \
            == [ingest.stdout[0]]

        assert ingest.stop() == 0
        assert ingest.stdout[-1].startswith("hub ingest stopped (SIGTERM): 80 events stored, "
                                            "40 duplicates dropped")
        assert web.stop() == 0
        no_traceback(ingest, web)


def test_every_web_worker_takes_a_new_token_drops_a_revoked_one_and_counts_refusals(
        tmp_path: Path) -> None:
    """Tokens made and revoked with the CLI while `hub web` runs count in every worker
    at its next request; refusals are one count across all workers."""
    import urllib.error

    config = write_config(tmp_path, "mqtt://127.0.0.1:1")
    with HubProcess("web", config, "--workers", "3") as web:
        url = web.wait_line("hub web on http://127.0.0.1:").split()[3]

        def status(token: str) -> tuple[int, int]:
            request = urllib.request.Request(f"{url}/api/v1/nodes",
                                             headers={"Authorization": f"Bearer {token}"})
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                    return response.status, int(response.headers["X-Tapcast-Worker"])
            except urllib.error.HTTPError as exc:
                return exc.code, int(exc.headers["X-Tapcast-Worker"])

        created = subprocess.run(
            [sys.executable, "-m", "hall.cli", "hub", "token", "create", "--config",
             str(config), "--user", "test", "--name", "late", "--scopes", "all"],
            capture_output=True, text=True, timeout=60)
        assert created.returncode == 0, created.stderr
        late = created.stdout.strip()
        late_id = re.search(r"\(id ([0-9a-f]{16})", created.stderr).group(1)  # type: ignore[union-attr]
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(status, [late] * 24))
            assert {code for code, _ in answers} == {200}
            assert len({pid for _, pid in answers}) >= 2  # more than one worker said yes
            revoked = subprocess.run(
                [sys.executable, "-m", "hall.cli", "hub", "token", "revoke", "--config",
                 str(config), late_id], capture_output=True, text=True, timeout=60)
            assert revoked.returncode == 0, revoked.stderr
            answers = list(pool.map(status, [late] * 24))
        assert {code for code, _ in answers} == {401}
        assert len({pid for _, pid in answers}) >= 2
        stats, _ = get(f"{url}/api/v1/stats")
        assert stats["api"]["auth_failures"] == 24  # one count, whichever worker refused
        assert late not in "\n".join(web.stdout + web.stderr)
        assert web.stop() == 0
        no_traceback(web)


def test_create_app_opens_no_mqtt_connection(tmp_path: Path) -> None:
    from hub import create_app

    nobody = socket.create_server(("127.0.0.1", 0))  # a "broker" that must never be called
    nobody.setblocking(False)
    try:
        port = nobody.getsockname()[1]
        config = hub_config(tmp_path / "hub.db", f"mqtt://127.0.0.1:{port}")
        app = create_app(config)
        client = app.test_client()
        stats = client.get("/api/v1/stats",
                           headers={"Authorization": f"Bearer {api_token(config)}"})
        assert stats.status_code == 200 and stats.json["ingest"] is None
        assert stats.headers["X-Tapcast-Worker"] == str(os.getpid())
        assert client.get("/").status_code == 200
        with pytest.raises(BlockingIOError):
            nobody.accept()
    finally:
        nobody.close()


def test_ingest_says_it_cannot_reach_the_broker_keeps_retrying_and_survives_a_restart(
        tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "mosquitto")  # its port, not started yet
    config = write_config(tmp_path, broker.url)
    with HubProcess("ingest", config) as ingest:
        try:
            waiting = ingest.wait_line("cannot reach the MQTT broker")
            assert waiting == (f"cannot reach the MQTT broker at {broker.url} (Connection "
                               "refused); hub ingest keeps retrying until it answers")
            broker.start()
            ingest.wait_line(f"hub ingest subscribed at {broker.url}")
            broker.restart()
            ingest.wait_line(f"lost the MQTT broker at {broker.url}")
            ingest.wait_line("subscribed at mqtt://127.0.0.1:{} as 'tapcast-hub' again"
                             .format(broker.port))
            node = NodePublisher(broker.url, tmp_path / "var" / "stream.secret", timeout=TIMEOUT)
            try:
                node.publish_batch(batch("n1", range(1, 4)))
                node.wait_acked("n1", 3)
            finally:
                node.close()
            assert ingest.stop(signal.SIGINT) == 0
        finally:
            broker.stop()
        assert ingest.stdout[-1].startswith("hub ingest stopped (SIGINT): 3 events stored")
        no_traceback(ingest)


def test_serve_runs_web_and_ingest_and_stops_both(mosquitto: Mosquitto, tmp_path: Path) -> None:
    config = write_config(tmp_path, mosquitto.url)
    with HubProcess("serve", config, "--workers", "1") as hub:
        hub.wait_line("hub ingest subscribed at")
        url = hub.wait_line("hub web on http://").split()[3]
        node = NodePublisher(mosquitto.url, tmp_path / "var" / "stream.secret", timeout=TIMEOUT)
        try:
            node.publish_batch(batch("n1", range(1, 6)))
            node.wait_acked("n1", 5)
        finally:
            node.close()
        assert get(f"{url}/api/v1/stats")[0]["events"]["total"] == 5
        web_master = {pid for pid in children(hub.pid) if b"hub.ingest_writer" not in
                      Path(f"/proc/{pid}/cmdline").read_bytes()}
        assert len(web_master) == 1
        assert hub.stop() == 0
        assert hub.stdout[-1].startswith("hub ingest stopped (SIGTERM): 5 events stored")
        assert not any(Path(f"/proc/{pid}").exists() for pid in web_master)
        with pytest.raises(OSError):
            get(f"{url}/api/v1/stats")
        no_traceback(hub)


def test_serve_killed_outright_takes_its_web_server_along(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    config = write_config(tmp_path, mosquitto.url)
    with HubProcess("serve", config, "--workers", "1") as hub:
        url = hub.wait_line("hub web on http://").split()[3]
        assert hub.stop(signal.SIGKILL) == -signal.SIGKILL
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                get(f"{url}/api/v1/stats")
            except OSError:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the web server outlived `hub serve`")


def one_error_line(command: str, config: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "hall.cli", "hub", command, "--config", str(config)],
        capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["ingest", "serve"])
def test_broker_url_with_another_scheme_is_one_line(command: str, tmp_path: Path) -> None:
    line = one_error_line(command, write_config(tmp_path, "tcp://host:1883"))
    assert "'tcp://host:1883'" in line and "expected an mqtt:// or mqtts:// URL" in line


@pytest.mark.parametrize("command", ["web", "ingest", "serve"])
def test_an_unreachable_postgresql_database_is_one_line(command: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, "mqtt://127.0.0.1:1883")
    line = one_error_line(command, config, {
        "TAPCAST_HUB__DATABASE": "postgresql://hub:secret@127.0.0.1:1/tapcast"})
    assert "127.0.0.1:1/tapcast: cannot open it" in line
    assert "secret" not in line


@pytest.mark.parametrize("command", ["web", "ingest", "serve"])
def test_a_database_that_is_not_migrated_is_one_line_naming_the_command(
        command: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, "mqtt://127.0.0.1:1883")
    line = one_error_line(command, config, {"TAPCAST_HUB__DATABASE": str(tmp_path / "new.db")})
    assert "not migrated" in line and "tapcast hub db upgrade" in line


@pytest.mark.parametrize("command", ["web", "ingest"])
def test_database_folder_that_cannot_be_created_is_one_line(command: str,
                                                             tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    database = tmp_path / "a-file" / "hub" / "hub.db"
    config = write_config(tmp_path, "mqtt://127.0.0.1:1883")
    line = one_error_line(command, config, {"TAPCAST_HUB__DATABASE": str(database)})
    assert line == (f"Error: hub database {database}: cannot create its folder "
                    f"{database.parent}: Not a directory")


def test_database_folder_that_is_not_writable_is_one_line(tmp_path: Path) -> None:
    # sysfs takes no new files, whoever asks (root included, as in CI containers).
    config = write_config(tmp_path, "mqtt://127.0.0.1:1883")
    line = one_error_line("ingest", config, {"TAPCAST_HUB__DATABASE": "/sys/hub.db"})
    assert line.startswith("Error: hub database /sys/hub.db: its folder /sys is not writable: ")
    assert "serv" not in line


@pytest.mark.parametrize("command", ["web", "serve"])
def test_web_port_in_use_is_one_line(command: str, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        config = write_config(tmp_path, f"mqtt://127.0.0.1:{free_port()}", port=port)
        line = one_error_line(command, config)
    assert line == (f"Error: port {port} on 127.0.0.1 is already in use: stop what listens "
                    "there, or pick another [hub] port")

