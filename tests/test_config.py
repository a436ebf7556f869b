from __future__ import annotations

import re
from pathlib import Path

import pytest

from node.config import NodeConfig
from tapcast import config as cfg


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_node_config_fills_defaults_for_missing_sections(tmp_path: Path) -> None:
    conf = cfg.load(NodeConfig, write(tmp_path, '[node]\nid = "n1"\n'), environ={})
    assert conf.node.id == "n1"
    assert conf.nfc.poll_interval < 0.5  # nfcpy's 0.5 s default would eat the tap budget
    assert conf.mqtt.brokers == ["mqtt://127.0.0.1:1883"]


def test_environment_overrides_a_key_with_a_toml_value(tmp_path: Path) -> None:
    conf = cfg.load(NodeConfig, write(tmp_path, '[node]\nid = "n1"\n'),
                    environ={"TAPCAST_MQTT__BROKERS": '["mqtt://a:1", "mqtt://b:2"]',
                             "TAPCAST_NODE__ZONE": "lobby"})
    assert conf.mqtt.brokers == ["mqtt://a:1", "mqtt://b:2"]
    assert conf.node.zone == "lobby"


def test_unknown_key_is_rejected_naming_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[node]\nid = "n1"\npoll = 3\n')
    with pytest.raises(cfg.ConfigError, match=r"node\.toml.*poll"):
        cfg.load(NodeConfig, path, environ={})


def test_wrong_type_is_rejected_naming_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[node]\nid = "n1"\n[nfc]\npoll_interval = "fast"\n')
    with pytest.raises(cfg.ConfigError, match=r"poll_interval"):
        cfg.load(NodeConfig, path, environ={})


def test_broken_toml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(cfg.ConfigError, match="not valid TOML"):
        cfg.load(NodeConfig, write(tmp_path, "[node\nid="), environ={})


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(cfg.ConfigError, match="no such config file"):
        cfg.load(NodeConfig, tmp_path / "absent.toml", environ={})


def test_dump_round_trips_through_load(tmp_path: Path) -> None:
    conf = cfg.load(NodeConfig, data={"node": {"id": "n2", "zone": "lobby"},
                                          "mqtt": {"brokers": ["mqtt://x:1"]}}, environ={})
    again = cfg.load(NodeConfig, write(tmp_path, cfg.dump(conf)), environ={})
    assert again == conf


def test_an_env_override_that_looks_like_a_number_is_kept_as_text_for_a_text_setting() -> None:
    conf = cfg.load(NodeConfig, data={"node": {"id": "n1"}},
                    environ={"TAPCAST_MQTT__PASSWORD": "123456", "TAPCAST_MQTT__KEEPALIVE": "15"})
    assert conf.mqtt.password == "123456"
    assert conf.mqtt.keepalive == 15


def test_an_env_override_of_the_wrong_type_still_says_which_key() -> None:
    with pytest.raises(cfg.ConfigError, match="keepalive"):
        cfg.load(NodeConfig, data={"node": {"id": "n1"}},
                 environ={"TAPCAST_MQTT__KEEPALIVE": "soon"})


def test_a_node_with_an_unknown_time_zone_refuses_to_start_with_what_to_use(
        tmp_path: Path) -> None:
    from node.daemon import NodeDaemon

    conf = cfg.load(NodeConfig, data={"node": {"id": "n1", "timezone": "Europe/Atlantis",
                                               "data_dir": str(tmp_path)}}, environ={})
    with pytest.raises(ValueError, match="IANA name such as Europe/Berlin"):
        NodeDaemon(conf, push=object(), credentials=object(), stream_key=bytes(32))


@pytest.mark.parametrize("setting,says", [
    ({"timezone": "Mars/Olympus_Mons"}, "not an IANA time zone"),
    ({"public_url": "hub.example:8080"}, "not an http(s):// URL"),
])
def test_a_hub_time_zone_or_files_url_that_nodes_would_refuse_stops_the_hub_at_load(
        setting: dict[str, str], says: str) -> None:
    from hub.config import HubConfig
    from tapcast.config import ConfigError

    with pytest.raises(ConfigError, match=re.escape(says)):
        cfg.load(HubConfig, data={"hub": setting}, environ={})
