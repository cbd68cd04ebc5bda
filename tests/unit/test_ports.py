"""aura/ports.py: a taken default health port moves to a free one; a taken port the operator set stops `aura up`
in one line naming the port and where it was set (env or the TOML file)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from aura.natsd import free_port
from aura.ports import PortTaken, can_bind, choose_ports
from shared.config import SERVICE_NAMES, load_settings, setting_sources
from tests.fake_occupant import free_ports


@pytest.fixture()
def held() -> Iterator[int]:
    """A port something listens on for the test's length."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def own_ports(**overrides: int) -> dict[str, str]:
    """An environment giving every service a free port of its own, ``overrides`` on top."""
    ports = free_ports(SERVICE_NAMES) | overrides
    return {f"AURA_{n.upper()}_PORT": str(p) for n, p in ports.items()}


def test_a_taken_default_port_moves_to_a_free_one_and_says_so(held: int) -> None:
    env = own_ports(optimizer=held)
    sources = {k: v for k, v in setting_sources(env).items() if k != "optimizer_port"}  # as if nobody set it
    ports, moved = choose_ports(load_settings(env), sources)
    assert ports["optimizer"] != held and can_bind(ports["optimizer"], "127.0.0.1")
    assert moved == [f"optimizer's default port {held} is taken; its health app uses free port "
                     f"{ports['optimizer']} instead"]
    assert len(set(ports.values())) == len(SERVICE_NAMES)
    assert {n: p for n, p in ports.items() if n != "optimizer"} == {
        n: int(env[f"AURA_{n.upper()}_PORT"]) for n in SERVICE_NAMES if n != "optimizer"}


def test_a_free_port_stays_where_it_is() -> None:
    env = own_ports()
    ports, moved = choose_ports(load_settings(env), {})
    assert moved == [] and ports == {n: int(env[f"AURA_{n.upper()}_PORT"]) for n in SERVICE_NAMES}


def test_a_taken_port_set_in_the_environment_is_an_error_naming_it(held: int) -> None:
    env = own_ports(optimizer=held)
    with pytest.raises(PortTaken) as raised:
        choose_ports(load_settings(env), setting_sources(env))
    text = str(raised.value)
    assert "\n" not in text and str(held) in text and "env AURA_OPTIMIZER_PORT" in text and "optimizer" in text


def test_a_taken_port_set_in_the_config_file_is_an_error_naming_the_file(held: int, tmp_path: Path) -> None:
    config = tmp_path / "aura.toml"
    config.write_text(f"[aura]\nrisk_port = {held}\n")
    env = {k: v for k, v in own_ports().items() if k != "AURA_RISK_PORT"} | {"AURA_CONFIG": str(config)}
    with pytest.raises(PortTaken, match=rf"risk's health port {held} .*set by risk_port in {config}"):
        choose_ports(load_settings(env), setting_sources(env))


def test_one_port_set_for_two_processes_is_an_error_and_a_default_gives_way_to_a_set_port() -> None:
    shared = free_port()
    env = own_ports(ingest=shared, signal=shared)
    with pytest.raises(PortTaken, match=rf"signal's health port {shared} .* is also ingest's"):
        choose_ports(load_settings(env), setting_sources(env))
    sources = {k: v for k, v in setting_sources(env).items() if k != "signal_port"}  # signal at its default
    ports, moved = choose_ports(load_settings(env), sources)
    assert ports["ingest"] == shared and ports["signal"] != shared and len(moved) == 1


def test_setting_sources_name_where_each_set_setting_came_from(tmp_path: Path) -> None:
    config = tmp_path / "aura.toml"
    config.write_text("[aura]\nrisk_port = 9103\nsignal_port = 9102\n")
    sources = setting_sources({"AURA_CONFIG": str(config), "AURA_SIGNAL_PORT": "9202", "AURA_INGEST_PORT": ""})
    assert sources == {"risk_port": f"risk_port in {config}", "signal_port": "env AURA_SIGNAL_PORT"}
