"""The `tapcast` command as a person uses it: clear errors, and a demo that runs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tapcast.cli import main


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


@pytest.mark.slow
def test_demo_runs_the_whole_system_and_reports_ok(tmp_path: Path) -> None:
    """Embedded amqtt broker, hub, 2 nodes, 2 handsets, as `make demo` runs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "tapcast.cli", "demo", "--nodes", "2", "--handsets", "2",
         "--duration", "4", "--hub-port", "0", "--workdir", str(tmp_path), "--seed", "3"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "result: ok" in proc.stdout
    assert "hub: http://127.0.0.1:" in proc.stdout
    taps = int(proc.stdout.split("taps")[-1].split()[0])
    assert taps >= 4
