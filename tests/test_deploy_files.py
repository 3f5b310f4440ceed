"""The deploy files ops installs as they are: the systemd unit and the conf/ examples.

`systemd-analyze verify` checks the unit the way systemd itself would parse it; the other
tests pin the settings the drain, the secrets and the sandboxes depend on (issue 3,
DESIGN.md §7 and §12): the real CLI, alone and in a bubblewrap sandbox, makes only the
system calls the unit allows, and a sandbox starts under what the unit mounts over /proc.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import claude_agent_sdk
import pytest
from claude_agent_sdk import ClaudeSDKClient, PermissionResultAllow

from agent_webkitd.credentials import credential_name
from tests.standin.fixtures import fake_model_url, offline_cli_env, real_cli_options

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
    # this unit names that a test machine lacks: User=/Group=, LoadCredential=,
    # EnvironmentFile=, WorkingDirectory= and ReadWritePaths= are only resolved when the
    # service starts.
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


def test_unit_is_sandboxed_restarts_and_runs_as_its_own_user() -> None:
    settings = service_settings()
    expected = {
        "NoNewPrivileges": "true",
        "ProtectSystem": "strict",
        "PrivateTmp": "true",
        "Restart": "on-failure",
    }
    for key, value in expected.items():
        assert settings.get(key) == [value], f"{key}={value} expected, got {settings.get(key)}"
    for key in ("ReadWritePaths", "User"):
        assert settings.get(key) and all(settings[key]), f"{key}= must be set"
    assert settings["ExecStart"] == [f"{INSTALLED_BIN} --config /etc/agent-webkitd/prod.toml"]


def test_the_unit_passes_secrets_as_credentials_named_as_the_daemon_reads_them() -> None:
    settings = service_settings()
    loaded = dict(value.split(":", 1) for value in settings.get("LoadCredential", []))
    for variable in ("AGENT_WEBKIT_AUTH_TOKEN", "ANTHROPIC_API_KEY"):
        name = credential_name(variable)
        assert loaded.get(name) == f"/etc/agent-webkitd/credentials/{name}", f"LoadCredential={name}:"
    commented = re.findall(r"^#LoadCredential=(\w+):/etc/agent-webkitd/credentials/(\w+)$",
                           UNIT.read_text(), re.MULTILINE)
    assert {n for n, _ in commented} >= {credential_name(v) for v in
                                         ("CLAUDE_CODE_OAUTH_TOKEN", "DATABASE_URL", "AGENT_WEBKIT_TICKET_KEY")}
    assert all(n == f for n, f in commented)
    # An environment file only for what is not secret, and optional: none is needed.
    assert all(value.startswith("-") for value in settings.get("EnvironmentFile", []))
    assert not [v for v in settings.get("Environment", []) if re.search(r"KEY|TOKEN|SECRET|DATABASE_URL", v)]


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


def test_the_unit_is_hardened_to_an_exposure_of_3_or_lower(tmp_path: Path) -> None:
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text())
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True, text=True, timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert found, proc.stdout + proc.stderr
    assert float(found[1]) <= 3.0, proc.stdout


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


def unit_allows() -> tuple[str, set[str]]:
    """The unit's SystemCallFilter= and every system call it admits."""
    (value,) = service_settings()["SystemCallFilter"]
    allowed: set[str] = set()
    for item in value.split():
        allowed |= allowed_system_calls(item) if item.startswith("@") else {item}
    return value, allowed


def calls_made(counts: Path) -> set[str]:
    """The system calls in an `strace -c` summary."""
    return {line.split()[-1] for line in counts.read_text().splitlines()[2:]
            if line.strip() and not line.startswith("-") and line.split()[-1] != "total"}


async def run_a_tool(cli_path: Path, model_url: str, tmp_path: Path) -> None:
    """The real CLI (through `cli_path`) writes a file with its Write tool, as the stand-in
    model asks it to."""

    async def allow(name: str, data: dict[str, Any], context: Any) -> PermissionResultAllow:
        return PermissionResultAllow()

    options = dataclasses.replace(real_cli_options(model_url, tmp_path, allow), cli_path=str(cli_path))
    async with asyncio.timeout(60):
        client = ClaudeSDKClient(options)
        await client.connect()
        await client.query("please write hello to out.txt")
        async for _ in client.receive_response():
            pass
        await client.disconnect()
    assert (tmp_path / "work" / "out.txt").read_text() == "hello\n"


BUNDLED_CLI = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"
# A sandbox as the daemon starts one (DESIGN.md §12, [agent] network = "none"): these
# namespaces, the system read-only, a fresh /proc, the workspace and the CLI's state
# read-write, and the model reached through a socket, bridged to a loopback port inside.
SANDBOX_NAMESPACES = {"user", "mnt", "pid", "ipc", "uts", "cgroup", "net"}
SANDBOX_FLAGS = ["--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-uts",
                 "--unshare-cgroup-try", "--unshare-net", "--die-with-parent", "--new-session",
                 "--cap-drop", "ALL"]
SOCKET_INSIDE = "/run/agent-webkitd/model.sock"
BRIDGE_PORT = 18080


def sandbox_command(cli: Path, work: Path, state: Path, socket: Path, env: dict[str, str]) -> list[str]:
    argv = ["env", "-i", "bwrap", *SANDBOX_FLAGS,
            "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
            "--symlink", "usr/lib64", "/lib64", "--ro-bind", "/etc", "/etc",
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/home/agent",
            "--ro-bind", str(cli), str(cli), "--bind", str(work), str(work), "--bind", str(state), str(state),
            "--bind", str(socket), SOCKET_INSIDE, "--chdir", str(work), "--hostname", "agent"]
    for name, value in {"PATH": "/usr/bin:/bin", "HOME": "/home/agent", **env}.items():
        argv += ["--setenv", name, value]
    bridge = (f"socat TCP-LISTEN:{BRIDGE_PORT},bind=127.0.0.1,fork,reuseaddr UNIX-CONNECT:{SOCKET_INSIDE}"
              ' & exec "$0" "$@"')
    return [*argv, "--", "/bin/sh", "-c", bridge, str(cli)]


async def test_the_real_cli_running_a_tool_makes_only_system_calls_the_unit_allows(
    fake_model_url: str, tmp_path: Path
) -> None:
    value, allowed = unit_allows()
    counts = tmp_path / "strace.out"
    wrapper = tmp_path / "claude-under-strace"
    assert shutil.which("strace"), "strace is missing (Debian package strace)"
    wrapper.write_text(f'#!/bin/sh\nexec strace -f -qq -c -o {counts} {BUNDLED_CLI} "$@"\n')
    wrapper.chmod(0o755)
    await run_a_tool(wrapper, fake_model_url, tmp_path)
    used = calls_made(counts)
    assert len(used) > 20, counts.read_text()
    assert used - allowed == set(), f"{value} would refuse these: {sorted(used - allowed)}"


async def test_the_real_cli_in_its_bubblewrap_sandbox_makes_only_system_calls_the_unit_allows(
    fake_model_url: str, tmp_path: Path
) -> None:
    for tool, package in (("strace", "strace"), ("bwrap", "bubblewrap"), ("socat", "socat")):
        assert shutil.which(tool), f"{tool} is missing (Debian package {package})"
    value, allowed = unit_allows()
    # The model gateway's socket: here a socat that forwards to the stand-in model.
    socket = tmp_path / "model.sock"
    model = await asyncio.create_subprocess_exec(
        "socat", f"UNIX-LISTEN:{socket},fork", f"TCP:{fake_model_url.removeprefix('http://')}")
    try:
        async with asyncio.timeout(10):
            while not socket.exists():  # noqa: ASYNC110 - waiting for another process
                await asyncio.sleep(0.01)
        state = tmp_path / "config"  # real_cli_options: CLAUDE_CONFIG_DIR, beside work/
        inside = offline_cli_env(f"http://127.0.0.1:{BRIDGE_PORT}", state)
        command = sandbox_command(BUNDLED_CLI, tmp_path / "work", state, socket, inside)
        (tmp_path / "work").mkdir()
        counts = tmp_path / "strace.out"
        wrapper = tmp_path / "claude-in-a-sandbox-under-strace"
        wrapper.write_text(f'#!/bin/sh\nexec strace -f -qq -c -o {counts} {shlex.join(command)} "$@"\n')
        wrapper.chmod(0o755)
        await run_a_tool(wrapper, fake_model_url, tmp_path)
    finally:
        model.terminate()
        await model.wait()
    used = calls_made(counts)
    assert {"mount", "pivot_root", "sethostname"} <= used, "bwrap's own calls were not traced"
    assert used - allowed == set(), f"{value} would refuse these: {sorted(used - allowed)}"


def test_the_unit_lets_bubblewrap_make_its_namespaces_and_name_its_host() -> None:
    settings = service_settings()
    (namespaces,) = settings["RestrictNamespaces"]
    # Exactly these: --unshare-cgroup-try fails (EPERM) when cgroup is not allowed too.
    assert set(namespaces.split()) == SANDBOX_NAMESPACES
    # ProtectHostname= forbids sethostname() even in the sandbox's own UTS namespace.
    assert settings.get("ProtectHostname", ["false"]) == ["false"], "bwrap --hostname would fail"


# What systemd (src/core/namespace.c, v252) mounts over /proc for a setting. The kernel lets
# bubblewrap mount a fresh /proc in its namespaces only if the /proc it sees is fully
# visible: nothing mounted over anything inside it ("mount_too_revealing").
PROC_MOUNTS = {
    "ProtectKernelTunables": ("/proc/acpi", "/proc/apm", "/proc/asound", "/proc/bus", "/proc/fs",
                              "/proc/irq", "/proc/kallsyms", "/proc/kcore", "/proc/latency_stats",
                              "/proc/mtrr", "/proc/scsi", "/proc/sys", "/proc/sysrq-trigger",
                              "/proc/timer_stats"),
    "ProtectKernelLogs": ("/proc/kmsg",),
}
PATH_SETTINGS = ("ReadOnlyPaths", "InaccessiblePaths", "ReadWritePaths", "ExecPaths", "NoExecPaths",
                 "BindPaths", "BindReadOnlyPaths", "TemporaryFileSystem")


def proc_as_the_unit_shows_it(settings: dict[str, list[str]]) -> list[str]:
    """Shell lines that mount /proc as systemd would for these settings."""
    options = ["nosuid", "nodev", "noexec"]
    protect_proc, subset = settings.get("ProtectProc", ["default"])[-1], settings.get("ProcSubset", ["all"])[-1]
    if protect_proc != "default" or subset != "all":  # a fresh instance with these options
        options += [f"hidepid={'off' if protect_proc == 'default' else protect_proc}"]
        options += ["subset=pid"] if subset == "pid" else []
    lines = [f"mount -t proc -o {','.join(options)} proc /proc"]
    over = [path for setting, paths in PROC_MOUNTS.items()
            if settings.get(setting, ["false"])[-1] in ("true", "yes") for path in paths]
    for key in PATH_SETTINGS:
        for value in settings.get(key, []):
            paths = (item.lstrip("-+").split(":")[0] for item in value.split())
            over += [path for path in paths if path == "/proc" or path.startswith("/proc/")]
    lines += [f"[ ! -e {p} ] || {{ mount --bind {p} {p} && mount -o remount,bind,ro {p}; }}" for p in over]
    return lines


@pytest.mark.parametrize(
    ("added", "starts"),
    [({}, True), ({"ProtectKernelTunables": ["true"]}, False), ({"ProtectKernelLogs": ["true"]}, False),
     ({"InaccessiblePaths": ["-/proc/kallsyms"]}, False)],
    ids=["the-unit", "with-ProtectKernelTunables", "with-ProtectKernelLogs", "with-a-path-under-proc"],
)
def test_a_sandbox_starts_under_what_the_unit_mounts_over_proc(
    added: dict[str, list[str]], starts: bool
) -> None:
    # Unprivileged, as the service's user: in a user, mount and PID namespace of its own,
    # /proc as the unit would show it, then a sandbox in namespaces nested in those.
    script = [*proc_as_the_unit_shows_it({**service_settings(), **added}),
              shlex.join(["bwrap", *SANDBOX_FLAGS, "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin",
                          "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
                          "--proc", "/proc", "--dev", "/dev", "--hostname", "agent", "--", "/bin/true"])]
    proc = subprocess.run(["unshare", "--map-root-user", "--mount", "--pid", "--fork", "--propagation", "private",
                           "/bin/sh", "-ec", "\n".join(script)], capture_output=True, text=True, timeout=60)
    if starts:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode != 0 and "Can't mount proc" in proc.stderr, proc.stderr
