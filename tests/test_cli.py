"""The `tapcast` command as a person uses it: clear errors, and a demo that runs."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hall.cli import main


def test_node_run_with_a_broken_config_says_which_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "node.toml"
    bad.write_text('[node]\nid = "n1"\n[nfc]\npoll_interval = "soon"\n')
    result = CliRunner().invoke(main, ["node", "run", "--config", str(bad)])
    assert result.exit_code == 1
    assert "node.toml" in result.output and "poll_interval" in result.output


def test_node_run_without_key_files_says_what_is_missing(tmp_path: Path) -> None:
    conf = tmp_path / "node.toml"
    conf.write_text('[node]\nid = "n1"\n')
    result = CliRunner().invoke(main, ["node", "run", "--config", str(conf)])
    assert result.exit_code == 1
    assert "node.key" in result.output
    assert "tapcast keys node" in result.output


def _hub_toml(tmp_path: Path) -> str:
    """hub.toml naming a migrated SQLite database, for the account commands."""
    from hub.migrate import upgrade

    upgrade(str(tmp_path / "hub.db"), echo=lambda line: None)
    config = tmp_path / "hub.toml"
    config.write_text(f'[hub]\ndatabase = "{tmp_path / "hub.db"}"\n')
    return str(config)


@pytest.fixture
def cheap_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    import hub.accounts
    from hall.testing.hub import cheap_password_hashing

    monkeypatch.setattr(hub.accounts, "HASHER", cheap_password_hashing())


def _accounts(tmp_path: Path):  # noqa: ANN202
    from hub.accounts import Accounts
    from hub.db import open_db

    return Accounts(open_db(str(tmp_path / "hub.db")).engine)


def test_the_first_admin_is_made_by_the_cli_with_a_password_asked_twice(
        tmp_path: Path, cheap_passwords: None) -> None:
    config = _hub_toml(tmp_path)
    result = CliRunner().invoke(main, ["hub", "user", "create", "--config", config,
                                       "--username", "alice", "--role", "admin"],
                                input="correct horse battery\ncorrect horse battery\n")
    assert result.exit_code == 0, result.output
    assert "correct horse" not in result.output  # not echoed
    accounts = _accounts(tmp_path)
    assert accounts.authenticate("alice", "correct horse battery").role == "admin"
    entry = accounts.audit_entries()[0]
    assert (entry["action"], entry["via"]) == ("user.create", "cli")
    assert entry["actor_name"].startswith("cli:")


@pytest.mark.parametrize("password,why", [("short", "too short"),
                                          ("alice alice alice", "must not contain")])
def test_user_create_refuses_a_weak_password_and_makes_nobody(
        tmp_path: Path, password: str, why: str) -> None:
    config = _hub_toml(tmp_path)
    result = CliRunner().invoke(main, ["hub", "user", "create", "--config", config,
                                       "--username", "alice", "--role", "admin",
                                       "--password-stdin"], input=password + "\n")
    assert result.exit_code == 1 and why in result.output
    assert _accounts(tmp_path).get_user("alice") is None


def test_user_create_with_differing_passwords_asks_again(tmp_path: Path,
                                                         cheap_passwords: None) -> None:
    config = _hub_toml(tmp_path)
    result = CliRunner().invoke(main, ["hub", "user", "create", "--config", config,
                                       "--username", "alice", "--role", "admin"],
                                input="correct horse battery\nother\n"
                                      "correct horse battery\ncorrect horse battery\n")
    assert result.exit_code == 0 and "do not match" in result.output


def test_user_commands_list_set_role_disable_and_refuse_to_strand_the_hub(
        tmp_path: Path, cheap_passwords: None) -> None:
    config = _hub_toml(tmp_path)
    runner = CliRunner()

    def run(*args: str, stdin: str | None = None) -> object:
        return runner.invoke(main, ["hub", "user", args[0], "--config", config, *args[1:]],
                             input=stdin)

    assert run("list").output.startswith("no users: make the first admin")
    assert run("create", "--username", "root", "--role", "admin", "--password-stdin",
               stdin="correct horse battery\n").exit_code == 0
    assert run("create", "--username", "bob", "--role", "operator",
               "--no-password").exit_code == 0
    assert run("create", "--username", "bob", "--role", "admin",
               "--no-password").output.endswith("user 'bob' exists\n")
    lines = run("list").output.splitlines()
    assert lines[0].startswith("bob\toperator\tenabled\tno password")
    assert lines[1].startswith("root\tadmin\tenabled\tpassword")
    assert run("set-role", "bob", "auditor").exit_code == 0
    last = run("disable", "root")
    assert last.exit_code == 1 and "last enabled admin" in last.output
    assert run("disable", "bob").exit_code == 0
    assert "bob\tauditor\tdisabled" in run("list").output
    actions = [e["action"] for e in _accounts(tmp_path).audit_entries()]
    assert actions == ["user.update", "user.update", "user.create", "user.create"]


def test_the_cli_knows_the_hubs_roles() -> None:
    from hall.cli import _ROLES
    from hub.accounts import ROLES

    assert _ROLES == ROLES


def test_hub_token_commands_create_list_and_revoke(tmp_path: Path) -> None:
    config = _hub_toml(tmp_path)
    runner = CliRunner()
    assert runner.invoke(main, ["hub", "user", "create", "--config", config, "--username",
                                "alice", "--role", "operator", "--no-password"]).exit_code == 0
    created = runner.invoke(main, ["hub", "token", "create", "--config", config, "--user",
                                   "alice", "--name", "grafana", "--scopes",
                                   "nodes:read,stats:read"])
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    assert token.startswith("tc1_") and len(token) == 47
    assert "shown only this once" in created.stderr
    user, record = _accounts(tmp_path).check_token(token)
    assert (user.username, record.scopes) == ("alice", ("nodes:read", "stats:read"))
    wider = runner.invoke(main, ["hub", "token", "create", "--config", config, "--user",
                                 "alice", "--name", "admin", "--scopes", "users:admin"])
    assert wider.exit_code == 1 and "beyond what role operator may do" in wider.output
    again = runner.invoke(main, ["hub", "token", "create", "--config", config, "--user",
                                 "alice", "--name", "grafana", "--scopes", "all"])
    assert again.exit_code == 1 and "revoke it or pick another name" in again.output
    listed = runner.invoke(main, ["hub", "token", "list", "--config", config])
    assert listed.output.startswith(f"{record.id}\talice\tgrafana\tnodes:read stats:read")
    assert token not in listed.output
    revoked = runner.invoke(main, ["hub", "token", "revoke", "--config", config, record.id])
    assert revoked.exit_code == 0 and _accounts(tmp_path).check_token(token) is None
    gone = runner.invoke(main, ["hub", "token", "revoke", "--config", config, "ffff"])
    assert gone.exit_code == 1 and "no token 'ffff'" in gone.output


def test_account_commands_on_an_unmigrated_database_say_what_to_run(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(f'[hub]\ndatabase = "{tmp_path / "hub.db"}"\n')
    result = CliRunner().invoke(main, ["hub", "user", "list", "--config", str(config)])
    assert result.exit_code == 1 and "tapcast hub db upgrade" in result.output


@pytest.mark.slow
def test_demo_runs_the_whole_system_and_reports_ok(tmp_path: Path) -> None:
    """Mosquitto, hub web + hub ingest processes, 2 node processes, 2 handsets, as
    `make demo` runs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "hall.cli", "demo", "--nodes", "2", "--handsets", "2",
         "--duration", "4", "--hub-port", "0", "--workdir", str(tmp_path), "--seed", "3"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "result: ok" in proc.stdout
    assert "hub: http://127.0.0.1:" in proc.stdout
    # the demo's own admin (a random password, for the page) and token (for the API)
    assert re.search(r"sign in as demo\S* with password \S{12,}", proc.stdout)
    assert "Authorization: Bearer tc1_" in proc.stdout
    assert "2 node processes serving taps" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    taps = int(proc.stdout.split("taps")[-1].split()[0])
    assert taps >= 4


def test_keys_commands_provision_a_node_that_loads(tmp_path: Path) -> None:
    from tapcast.config import KeysSection
    from tapcast.keys import load_node_credentials

    runner = CliRunner()
    assert runner.invoke(main, ["keys", "init-hub", "--dir", str(tmp_path / "hub")]).exit_code == 0
    result = runner.invoke(main, ["keys", "node", "--hub-dir", str(tmp_path / "hub"),
                                  "--out", str(tmp_path / "n1"), "--id", "n1", "--zone", "lobby"])
    assert result.exit_code == 0, result.output
    creds = load_node_credentials(KeysSection(), tmp_path / "n1")
    assert (creds.node_id, creds.zone) == ("n1", "lobby")
    again = runner.invoke(main, ["keys", "init-hub", "--dir", str(tmp_path / "hub")])
    assert again.exit_code == 1 and "refusing" in again.output


def test_keys_node_refuses_to_overwrite_an_existing_node_key(tmp_path: Path) -> None:
    runner = CliRunner()
    runner.invoke(main, ["keys", "init-hub", "--dir", str(tmp_path / "hub")])
    args = ["keys", "node", "--hub-dir", str(tmp_path / "hub"), "--out", str(tmp_path / "n1"),
            "--id", "n1", "--zone", "lobby"]
    assert runner.invoke(main, args).exit_code == 0
    key = (tmp_path / "n1" / "node.key").read_bytes()
    again = runner.invoke(main, args)
    assert again.exit_code == 1
    assert "already has a key" in again.output and "--force" in again.output
    assert (tmp_path / "n1" / "node.key").read_bytes() == key
    assert runner.invoke(main, args + ["--force"]).exit_code == 0
    assert (tmp_path / "n1" / "node.key").read_bytes() != key


def provisioned_node(tmp_path: Path, **sections: dict[str, object]) -> Path:
    runner = CliRunner()
    runner.invoke(main, ["keys", "init-hub", "--dir", str(tmp_path / "hub")])
    runner.invoke(main, ["keys", "node", "--hub-dir", str(tmp_path / "hub"), "--out",
                         str(tmp_path / "n1"), "--id", "n1", "--zone", "lobby"])
    from node.config import NodeConfig
    from tapcast import config as cfg
    conf = cfg.load(NodeConfig, data={"node": {"id": "n1", "zone": "lobby"},
                                      "mqtt": {"brokers": ["mqtt://127.0.0.1:1"]},
                                      "display": {"port": 0}, **sections}, environ={})
    path = tmp_path / "n1" / "node.toml"
    path.write_text(cfg.dump(conf))
    return path


def test_node_run_with_a_missing_nfc_reader_says_so_in_one_line(tmp_path: Path) -> None:
    path = provisioned_node(tmp_path, nfc={"device": "tty:NO_SUCH_TTY:pn532"})
    proc = subprocess.run([sys.executable, "-m", "hall.cli", "node", "run", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    assert "NFC reader 'tty:NO_SUCH_TTY:pn532' cannot be opened" in errors[0]
    assert "[nfc] device" in errors[0]


def test_demo_with_an_unreachable_broker_names_the_broker(tmp_path: Path) -> None:
    from hall.testing.mosquitto import free_port
    url = f"mqtt://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(main, ["demo", "--broker", url, "--hub-port", "0",
                                       "--workdir", str(tmp_path), "--duration", "1"])
    assert result.exit_code == 1
    assert f"cannot reach the MQTT broker at {url}" in result.output
    assert "port" not in result.output.split(url)[0]  # not blamed on the hub's port
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_demo_summary_is_not_ok_when_a_tap_failed() -> None:
    from hall.demo import Summary
    from handset_app.sim import TapReport

    summary = Summary()
    summary.add(TapReport(started=0.0, authenticated=0.01, first_item_at=0.05, items=["a"]))
    assert summary.ok
    summary.add(TapReport(started=1.0, authenticated=1.01, error="ble: TimeoutError: no ack"))
    assert not summary.ok
    assert "result: NOT OK (1 tap(s) failed)" in summary.render()


def test_demo_summary_is_not_ok_when_an_event_did_not_reach_the_hub() -> None:
    from hall.demo import Summary
    from handset_app.sim import TapReport

    summary = Summary(undelivered_events=3)
    summary.add(TapReport(started=0.0, authenticated=0.01, first_item_at=0.05, items=["a"]))
    assert not summary.ok
    assert "3 event(s) did not reach the hub" in summary.render()


@pytest.mark.slow
def test_demo_on_the_embedded_broker_with_five_nodes_shows_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hall.cli", "demo", "--broker", "embedded", "--nodes", "5",
         "--handsets", "3", "--duration", "4", "--hub-port", "0", "--workdir", str(tmp_path),
         "--seed", "5"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "result: ok" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_demo_keep_hub_keeps_the_hub_up_until_ctrl_c(tmp_path: Path) -> None:
    import re
    import signal
    import urllib.error
    import urllib.request

    proc = subprocess.Popen(
        [sys.executable, "-m", "hall.cli", "demo", "--nodes", "1", "--handsets", "1",
         "--duration", "2", "--hub-port", "0", "--keep-hub", "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        url = token = ""
        for line in proc.stdout:
            if line.startswith("hub still up at"):
                url = re.search(r"http://[^\s;)]+", line).group(0)  # type: ignore[union-attr]
                token = re.search(r"API token (tc1_\S+?)\)", line).group(1)  # type: ignore[union-attr]
                assert re.search(r"sign in as demo\S* with password \S+;", line)
                break
        assert url, "the demo never said the hub stays up"
        request = urllib.request.Request(f"{url}/api/v1/stats",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:  # the hub is not open to all
            urllib.request.urlopen(f"{url}/api/v1/stats", timeout=5)
        assert refused.value.code == 401
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    try:
        urllib.request.urlopen(f"{url}/api/v1/stats", timeout=2)
        raise AssertionError("the hub is still up after Ctrl-C")
    except urllib.error.HTTPError:  # an answer, even a 401, means it is still up
        raise AssertionError("the hub is still up after Ctrl-C") from None
    except OSError:
        pass


def test_demo_hub_port_in_time_wait_from_the_last_run_counts_as_free() -> None:
    """Run the demo twice in a row: the first run's closed connections linger in
    TIME_WAIT on the hub port, which gunicorn (SO_REUSEADDR) binds through."""
    import socket

    from hall.demo import check_hub_port

    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()  # the server side closes first: its end waits in TIME_WAIT
        client.close()
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # what the old check did
    check_hub_port(port)


def test_demo_hub_port_held_by_a_listener_is_refused_with_the_fix() -> None:
    import socket

    from hall.demo import DemoError, check_hub_port

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with pytest.raises(DemoError, match="--hub-port 0"):
            check_hub_port(server.getsockname()[1])


@pytest.mark.parametrize("args, says", [
    (["--display", "lobby=/dev/nfc0"], "give NAME=DEVICE with an nfcpy device"),
    (["--ble", "bluez"], "the simulated phone serves GATT with bumble"),
    (["--ble", "bumble:"], "needs a bumble transport"),
    (["--hub", "127.0.0.1:8080"], "must be http(s)://host:port"),
])
def test_handset_app_options_are_checked_before_a_window_opens(
        tmp_path: Path, args: list[str], says: str) -> None:
    result = CliRunner().invoke(main, ["handset", "app", "--data-dir", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert says in result.output
