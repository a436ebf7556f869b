"""The event stream's key files: the hub's secret and each node's key derived from it,
written 0600, never silently replaced, and a clear line for a missing or broken file."""
from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from hall.cli import main
from tapcast.protocol.mqtt import stream_key
from tapcast.streamkeys import (STREAM_KEY_FILE, STREAM_SECRET_FILE, StreamKeyError,
                                load_node_stream_key, load_stream_secret,
                                write_node_stream_key, write_stream_secret)


def test_the_secret_is_written_private_and_reads_back(tmp_path: Path) -> None:
    secret = write_stream_secret(tmp_path)
    path = tmp_path / STREAM_SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_stream_secret(path) == secret and len(secret) == 32


def test_an_existing_secret_is_never_replaced(tmp_path: Path) -> None:
    secret = write_stream_secret(tmp_path)
    with pytest.raises(StreamKeyError, match="refusing to replace it"):
        write_stream_secret(tmp_path)
    assert load_stream_secret(tmp_path / STREAM_SECRET_FILE) == secret


def test_a_node_key_is_derived_from_the_secret_and_its_id(tmp_path: Path) -> None:
    secret = write_stream_secret(tmp_path / "hub")
    write_node_stream_key(tmp_path / "n1", secret, "n1")
    key = load_node_stream_key(tmp_path / "n1" / STREAM_KEY_FILE)
    assert key == stream_key(secret, "n1") != stream_key(secret, "n2")


@pytest.mark.parametrize("content, reason", [
    ("not hex\n", "not 64 hex digits"),
    ("abcd\n", "is 2 bytes, expected 32"),
])
def test_a_broken_key_file_says_what_is_wrong(tmp_path: Path, content: str, reason: str) -> None:
    (tmp_path / "stream.key").write_text(content)
    with pytest.raises(StreamKeyError, match=reason):
        load_node_stream_key(tmp_path / "stream.key")


def test_a_missing_secret_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(StreamKeyError, match="tapcast keys init-hub"):
        load_stream_secret(tmp_path / "nowhere" / STREAM_SECRET_FILE)


def test_keys_commands_give_the_node_the_key_the_hub_derives(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["keys", "init-hub", "--dir", str(tmp_path / "hub")]).exit_code == 0
    result = runner.invoke(main, ["keys", "node", "--hub-dir", str(tmp_path / "hub"),
                                  "--out", str(tmp_path / "n1"), "--id", "n1", "--zone", "lobby"])
    assert result.exit_code == 0, result.output
    secret = load_stream_secret(tmp_path / "hub" / STREAM_SECRET_FILE)
    assert load_node_stream_key(tmp_path / "n1" / STREAM_KEY_FILE) == stream_key(secret, "n1")


def test_keys_node_without_the_hubs_secret_says_so_in_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    runner.invoke(main, ["keys", "init-hub", "--dir", str(tmp_path / "hub")])
    (tmp_path / "hub" / STREAM_SECRET_FILE).unlink()
    result = runner.invoke(main, ["keys", "node", "--hub-dir", str(tmp_path / "hub"),
                                  "--out", str(tmp_path / "n1"), "--id", "n1", "--zone", "lobby"])
    assert result.exit_code == 1 and "no hub stream secret" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "n1").exists()  # nothing half-written


async def test_a_hall_refuses_a_workdir_whose_secret_its_nodes_would_not_match(
        tmp_path: Path) -> None:
    from hall.virtual import VirtualHall

    write_stream_secret(tmp_path / "hub-authority")  # left by an earlier run
    hall = VirtualHall(tmp_path, "mqtt://127.0.0.1:1", nodes=1, handsets=1, processes=False)
    with pytest.raises(ValueError, match="another stream secret"):
        await hall.start()
    await hall.stop()
