"""The `tapcast` command as a person uses it: clear errors, and a demo that runs."""
from __future__ import annotations

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


@pytest.mark.slow
def test_demo_runs_the_whole_system_and_reports_ok(tmp_path: Path) -> None:
    """Embedded amqtt broker, hub, 2 nodes, 2 handsets, as `make demo` runs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "hall.cli", "demo", "--nodes", "2", "--handsets", "2",
         "--duration", "4", "--hub-port", "0", "--workdir", str(tmp_path), "--seed", "3"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "result: ok" in proc.stdout
    assert "hub: http://127.0.0.1:" in proc.stdout
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
