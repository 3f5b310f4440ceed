"""The deploy files ops installs as they are: the systemd unit and the conf/ examples.

`systemd-analyze verify` checks the unit the way systemd itself would parse it; the other
tests pin the settings the drain and the sandbox depend on (issue 3, DESIGN.md §7).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import claude_agent_sdk
import pytest
from claude_agent_sdk import ClaudeSDKClient, PermissionResultAllow

from tests.standin.fixtures import fake_model_url, real_cli_options

__all__ = ["fake_model_url"]  # imported for pytest: it is a fixture

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "agent-webkitd.service"
PROD = ROOT / "conf" / "prod.toml"
DEV = ROOT / "conf" / "dev.toml"
INSTALLED_BIN = "/opt/agent-webkitd/.venv/bin/agent-webkitd"


def service_settings() -> dict[str, list[str]]:
    """Key -> every value it is given in the unit's [Service] section (comments skipped)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def seconds(value: str) -> float:
    """A systemd time span ("660", "660s", "11min", "1h 5min") in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        assert unit in units, f"unexpected time unit in {value!r}"
        total += float(number) * units[unit]
    return total


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing (Debian package systemd)"
    # verify checks that ExecStart's binary exists and is executable, and nothing else
    # this unit names that a test machine lacks: User=/Group=, EnvironmentFile=,
    # WorkingDirectory= and ReadWritePaths= are only resolved when the service starts.
    # So the one rewrite is the binary, pointed at this venv's console script.
    binary = Path(sys.prefix) / "bin" / "agent-webkitd"
    assert os.access(binary, os.X_OK), f"{binary} missing: is the package installed in this venv?"
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED_BIN} " in text
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(f"ExecStart={INSTALLED_BIN} ", f"ExecStart={binary} "))

    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )

    # Unknown keys and invalid values are only warnings (exit 0), so read stderr too.
    about_unit = [line for line in (proc.stdout + proc.stderr).splitlines() if UNIT.name in line]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert about_unit == [], "\n".join(about_unit)


def test_unit_drains_under_kill_mode_mixed_longer_than_the_drain_timeout() -> None:
    settings = service_settings()
    assert settings.get("KillMode") == ["mixed"], "only the daemon may get SIGTERM (DESIGN.md §7)"
    assert settings.get("KillSignal") == ["SIGTERM"]
    drain_s = tomllib.loads(PROD.read_text())["server"]["drain_timeout_s"]
    (stop,) = settings["TimeoutStopSec"]
    assert seconds(stop) > drain_s, f"TimeoutStopSec={stop} must exceed drain_timeout_s={drain_s}"


def test_unit_is_sandboxed_restarts_and_reads_secrets_from_a_file() -> None:
    settings = service_settings()
    expected = {
        "NoNewPrivileges": "true",
        "ProtectSystem": "strict",
        "PrivateTmp": "true",
        "Restart": "on-failure",
    }
    for key, value in expected.items():
        assert settings.get(key) == [value], f"{key}={value} expected, got {settings.get(key)}"
    for key in ("ReadWritePaths", "EnvironmentFile", "User"):
        assert settings.get(key) and all(settings[key]), f"{key}= must be set"
    assert settings["ExecStart"] == [f"{INSTALLED_BIN} --config /etc/agent-webkitd/prod.toml"]


@pytest.mark.parametrize("config", [PROD, DEV], ids=lambda p: p.name)
def test_shipped_configs_pass_check_config(config: Path) -> None:
    binary = Path(sys.prefix) / "bin" / "agent-webkitd"
    env = {**os.environ, "AGENT_WEBKIT_AUTH_TOKEN": "check-config-token-0123456789"}
    proc = subprocess.run(
        [str(binary), "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "check-config-token" not in proc.stdout + proc.stderr, "check-config printed the token"


def test_the_embedded_store_lives_where_the_unit_may_write_and_dev_keeps_it_out_of_git() -> None:
    prod_store = tomllib.loads(PROD.read_text())["store"]
    assert prod_store["backend"] == "sqlite"
    (writable,) = service_settings()["ReadWritePaths"]
    assert Path(prod_store["path"]).is_relative_to(writable)
    dev_store = tomllib.loads(DEV.read_text())["store"]
    dev_file = (DEV.parent / dev_store["path"]).resolve()
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(dev_file)], cwd=ROOT, capture_output=True, timeout=30
    )
    assert ignored.returncode == 0, f"{dev_file} would be committed"


def test_the_unit_is_hardened_to_an_exposure_of_5_or_lower(tmp_path: Path) -> None:
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text())
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True, text=True, timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert found, proc.stdout + proc.stderr
    assert float(found[1]) <= 5.0, proc.stdout


def allowed_system_calls(group: str, seen: set[str] | None = None) -> set[str]:
    """The system calls a SystemCallFilter= group admits, its nested groups expanded."""
    seen = seen if seen is not None else set()
    calls: set[str] = set()
    listing = subprocess.run(
        ["systemd-analyze", "syscall-filter", group], capture_output=True, text=True, timeout=30
    ).stdout.splitlines()[1:]
    for line in (raw.strip() for raw in listing):
        if line.startswith("@") and line not in seen:
            seen.add(line)
            calls |= allowed_system_calls(line, seen)
        elif line and not line.startswith("#"):
            calls.add(line)
    return calls


async def test_the_real_cli_running_a_tool_makes_only_system_calls_the_unit_allows(
    fake_model_url: str, tmp_path: Path
) -> None:
    (group,) = service_settings()["SystemCallFilter"]
    allowed = allowed_system_calls(group)
    bundled = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"
    counts = tmp_path / "strace.out"
    wrapper = tmp_path / "claude-under-strace"
    assert shutil.which("strace"), "strace is missing (Debian package strace)"
    wrapper.write_text(f'#!/bin/sh\nexec strace -f -qq -c -o {counts} {bundled} "$@"\n')
    wrapper.chmod(0o755)

    async def allow(name: str, data: dict[str, Any], context: Any) -> PermissionResultAllow:
        return PermissionResultAllow()

    options = dataclasses.replace(real_cli_options(fake_model_url, tmp_path, allow), cli_path=str(wrapper))
    async with asyncio.timeout(60):
        client = ClaudeSDKClient(options)
        await client.connect()
        await client.query("please write hello to out.txt")
        async for _ in client.receive_response():
            pass
        await client.disconnect()
    assert (tmp_path / "work" / "out.txt").read_text() == "hello\n"
    used = {line.split()[-1] for line in counts.read_text().splitlines()[2:]
            if line.strip() and not line.startswith("-") and line.split()[-1] != "total"}
    assert len(used) > 20, counts.read_text()
    assert used - allowed == set(), f"{group} would refuse these: {sorted(used - allowed)}"
