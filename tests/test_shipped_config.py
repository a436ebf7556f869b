"""Every shipped config file (firmware_config/) and every config snippet in
docs/deploy.md parses and names only settings the code knows; the systemd units run
commands that exist. The schemas forbid unknown fields, so a typo here is a failure,
not a silently ignored line on a Pi. (The broker's files run on a real Mosquitto in
tests/test_broker_acl.py.)"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner

from hall.cli import main
from hub.config import HubConfig
from node.config import NodeConfig
from tapcast.config import load

REPO = Path(__file__).resolve().parents[1]
FIRMWARE = REPO / "firmware_config"
DEPLOY = REPO / "docs" / "deploy.md"
SCHEMAS: dict[str, type[Any]] = {"node": NodeConfig, "hub": HubConfig}
UNITS = sorted(FIRMWARE.glob("*.service"))
INSTALLED_TAPCAST = "/opt/tapcast/.venv/bin/tapcast"


def _settings(schema: type[Any]) -> dict[str, Any]:
    """``{"[section] key": default}`` for every setting of a config schema
    (``msgspec.NODEFAULT`` for a required one)."""
    out: dict[str, Any] = {}
    for section in msgspec.structs.fields(schema):
        for field in msgspec.structs.fields(section.type):
            default = field.default
            if field.default_factory is not msgspec.NODEFAULT:
                default = field.default_factory()
            out[f"[{section.name}] {field.name}"] = default
    return out


def _shipped_settings(path: Path) -> set[str]:
    doc = tomllib.loads(path.read_text())
    return {f"[{section}] {key}" for section, values in doc.items() for key in values}


# --------------------------------------------------------- firmware_config/*.toml


def test_shipped_node_toml_loads_against_the_node_schema() -> None:
    config = load(NodeConfig, FIRMWARE / "node.toml", environ={})
    assert config.mqtt.brokers and all(b.startswith("mqtts://") for b in config.mqtt.brokers)
    assert config.mqtt.ca_file and config.mqtt.password is not None


def test_shipped_hub_toml_loads_against_the_hub_schema() -> None:
    load(HubConfig, FIRMWARE / "hub.toml", environ={})


@pytest.mark.parametrize("kind", ["node", "hub"])
def test_shipped_toml_sets_every_setting_the_code_has(kind: str) -> None:
    """An example that shows every setting: a new setting must be added (and explained)."""
    assert _shipped_settings(FIRMWARE / f"{kind}.toml") == set(_settings(SCHEMAS[kind]))


# ---------------------------------------------------------------- docs/deploy.md

_SNIPPET = re.compile(
    r"(?:<!-- config: (?P<kind>\w+)(?: = (?P<same_as>[\w./-]+))? -->\n)?```toml\n(?P<body>.*?)```",
    re.DOTALL)


def _snippets() -> list[tuple[str | None, str | None, str]]:
    return [(m["kind"], m["same_as"], m["body"]) for m in _SNIPPET.finditer(DEPLOY.read_text())]


def test_deploy_md_has_toml_snippets_and_each_names_its_schema() -> None:
    snippets = _snippets()
    assert len(snippets) >= 4
    unmarked = [body[:60] for kind, _, body in snippets if kind not in SCHEMAS]
    assert not unmarked, f"mark each ```toml block with <!-- config: node|hub -->: {unmarked}"


@pytest.mark.parametrize("index", range(len(_snippets())))
def test_deploy_md_toml_snippet_parses_against_its_schema(index: int) -> None:
    """Snippets may show a few sections; each section must convert to its schema."""
    kind, _, body = _snippets()[index]
    schema = SCHEMAS[kind or "node"]
    sections = {f.name: f.type for f in msgspec.structs.fields(schema)}
    for name, values in tomllib.loads(body).items():
        assert name in sections, f"[{name}] is not a section of {schema.__name__}"
        msgspec.convert(values, sections[name])  # ValidationError names an unknown key


@pytest.mark.parametrize("kind", ["node", "hub"])
def test_deploy_md_shows_the_whole_shipped_file(kind: str) -> None:
    whole = [body for k, same_as, body in _snippets()
             if k == kind and same_as == f"firmware_config/{kind}.toml"]
    assert len(whole) == 1, f"mark the full example <!-- config: {kind} = firmware_config/{kind}.toml -->"
    assert tomllib.loads(whole[0]) == tomllib.loads((FIRMWARE / f"{kind}.toml").read_text())


def _table_after(heading: str) -> dict[str, str]:
    """``{"[section] key": "default cell"}`` from the table under ``heading``."""
    text = DEPLOY.read_text()
    start = text.index(f"\n{heading}\n")
    rest = text[start + len(heading) + 2:]
    end = re.search(r"\n#{1,3} ", rest)
    rows = re.findall(r"^\| `(\[\w+\] \w+)` \| ([^|]+) \|", rest[:end.start() if end else None],
                      re.MULTILINE)
    return {key: default.strip() for key, default in rows}


def _toml_default(value: Any) -> str:
    if value is msgspec.NODEFAULT:
        return "required"
    if value is None:
        return "not set"
    return f"`{_toml(value)}`"


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


@pytest.mark.parametrize("kind, heading", [("node", "### Every node setting"),
                                           ("hub", "### Every hub setting")],
                         ids=["node", "hub"])
def test_deploy_md_explains_exactly_the_settings_the_code_has_with_their_defaults(
        kind: str, heading: str) -> None:
    documented = _table_after(heading)
    expected = {key: _toml_default(default) for key, default in _settings(SCHEMAS[kind]).items()}
    assert documented == expected


def test_every_etc_path_in_firmware_config_is_explained_in_deploy_md() -> None:
    doc = DEPLOY.read_text()
    paths = {p for f in FIRMWARE.iterdir() for p in re.findall(r"/etc/[\w./-]+\w", f.read_text())}
    assert paths
    assert sorted(p for p in paths if p not in doc) == []


# ----------------------------------------------------------------- systemd units


def _exec_start(unit: Path) -> list[str]:
    line = next(line for line in unit.read_text().splitlines() if line.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def _unit_value(unit: Path, key: str) -> str:
    return next(line.split("=", 1)[1] for line in unit.read_text().splitlines()
                if line.startswith(f"{key}="))


def test_firmware_config_ships_the_node_and_hub_units() -> None:
    assert [u.name for u in UNITS] == ["tapcast-hub-ingest.service", "tapcast-hub-web.service",
                                       "tapcast-node.service"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_runs_a_tapcast_command_that_exists_with_its_options(unit: Path) -> None:
    program, *args = _exec_start(unit)
    assert program == INSTALLED_TAPCAST
    command = [a for a in args if not a.startswith("-") and not a.startswith("/")]
    options = [a for a in args if a.startswith("--")]
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    for option in options:
        assert option in result.output


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_config_file_is_the_shipped_one_for_its_part(unit: Path) -> None:
    args = _exec_start(unit)
    config = Path(args[args.index("--config") + 1])
    part = args[1]  # "node" or "hub"
    assert config == Path("/etc/tapcast") / f"{part}.toml"
    assert (FIRMWARE / config.name).exists()


def test_node_unit_state_directory_is_node_toml_data_dir() -> None:
    unit = FIRMWARE / "tapcast-node.service"
    config = load(NodeConfig, FIRMWARE / "node.toml", environ={})
    assert Path("/var/lib") / _unit_value(unit, "StateDirectory") == Path(config.node.data_dir)


@pytest.mark.parametrize("name", ["tapcast-hub-web.service", "tapcast-hub-ingest.service"])
def test_hub_unit_state_directory_holds_hub_toml_database(name: str) -> None:
    config = load(HubConfig, FIRMWARE / "hub.toml", environ={})
    state = Path("/var/lib") / _unit_value(FIRMWARE / name, "StateDirectory")
    assert Path(config.hub.database).parent == state


def test_udev_rule_group_is_one_the_node_unit_joins() -> None:
    groups = _unit_value(FIRMWARE / "tapcast-node.service", "SupplementaryGroups").split()
    rule_groups = set(re.findall(r'GROUP="(\w+)"', (FIRMWARE / "99-tapcast-nfc.rules").read_text()))
    assert rule_groups and rule_groups <= set(groups)


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_systemd_accepts_the_unit(unit: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    tapcast = Path(sys.executable).with_name("tapcast")  # this venv's, for the exec check
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace(INSTALLED_TAPCAST, str(tapcast)))
    result = subprocess.run([analyze, "verify", str(copy)], check=False, capture_output=True,
                            text=True, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
