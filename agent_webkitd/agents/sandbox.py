"""Agents are untrusted (DESIGN §12): how each CLI is confined.

With `[agent] sandbox = "bwrap"` every CLI starts inside bubblewrap: its own user, mount,
PID, IPC, UTS and cgroup namespaces (and network, unless `network = "host"`), no
capabilities, killed with the daemon. It sees the system read-only, the CLI binary, its
session's workspace and CLI state folder read-write, a private /tmp and HOME, and
nothing else of the host: not the store, the config, `.env`, other sessions or the daemon.

The SDK starts "the CLI" as `cli_path args...` with the daemon's environment, so the
daemon writes a small launcher (`cli_path` for every sandboxed CLI) that re-executes
bubblewrap with an empty environment: the daemon's environment never enters the sandbox,
not even as the environment of the sandbox's PID 1. The sandbox's own environment is the
explicit list in `sandbox_environment`: never a token, the ticket key, the store's DSN or
the model credential; the CLI's ANTHROPIC_API_KEY is a session key the model gateway
(gateway.py) accepts only while that CLI runs.

With `network = "none"` the sandbox has only a loopback interface; a socat inside bridges
a loopback port to the gateway's Unix socket, bound into the sandbox: the model is the
one way out. `sandbox = "none"` runs the CLI unconfined (the gateway still keeps the key
out of its environment).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

from claude_agent_sdk import ClaudeAgentOptions

from ..config import AgentConfig
from ..errors import SandboxUnavailable
from .gateway import ModelGateway

SOCKET_INSIDE = "/run/agent-webkitd/model.sock"
BRIDGE_PORT = 18080  # the gateway, as the CLI sees it inside its own network namespace
HOME_INSIDE = "/home/agent"
# What the system offers a CLI and its tools, read-only; the rest of / is not there.
SYSTEM_PATHS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Variables the SDK sets for the CLI that the launcher carries into the sandbox.
SDK_VARIABLES = (
    "CLAUDE_CODE_ENTRYPOINT",
    "CLAUDE_AGENT_SDK_VERSION",
    "CLAUDE_AGENT_SDK_CLIENT_APP",
    "CLAUDE_AGENT_SDK_DERIVED_CLIENT_APP",
    "CLAUDE_CODE_SDK_READS_SESSION_STATE",
    "CLAUDE_CODE_ENABLE_SDK_FILE_CHECKPOINTING",
    "TRACEPARENT",
    "TRACESTATE",
)
ARGS_ENV = "AGENT_WEBKITD_SANDBOX_ARGS"
CLI_ENV = "AGENT_WEBKITD_CLI"
CHECK_TIMEOUT_S = 10.0
# Never from [agent.env]: the gateway holds the credential and says where the model is,
# and each session has a CLI state folder of its own.
DAEMONS_VARIABLES = (
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "ANTHROPIC_BASE_URL",
    "CLAUDE_CONFIG_DIR",
)

# The launcher, filled in at start-up (@NAME@ placeholders).
LAUNCHER = """#!/bin/sh
# Written by agent-webkitd at start-up: the SDK runs this as the Claude Code CLI. It starts
# bubblewrap with an empty environment, this CLI's arguments (fd 3; the file is removed at
# once), the CLI state folder the SDK chose, and the variables the SDK set for the CLI.
set -eu
exec 3<"$@ARGS_ENV@"
rm -f "$@ARGS_ENV@"
set -- "$@CLI_ENV@" "$@"
@BRIDGE@
set -- -- "$@"
for name in @SDK_VARIABLES@; do
    if eval "[ -n \\"\\${$name+set}\\" ]"; then
        eval "set -- --setenv $name \\"\\$$name\\" \\"\\$@\\""
    fi
done
exec /usr/bin/env -i @BWRAP@ --args 3 \\
    --bind "$CLAUDE_CONFIG_DIR" "$CLAUDE_CONFIG_DIR" --setenv CLAUDE_CONFIG_DIR "$CLAUDE_CONFIG_DIR" "$@"
"""
# network = "none": a loopback port inside, bridged to the gateway's socket, then the CLI.
# socat needs no environment (and carries no marker: it dies with the sandbox's PID 1);
# nodelay: without it a small write waits ~40 ms for the CLI's delayed ACK (measured).
BRIDGE = (
    f"set -- /bin/sh -c 'env -i socat TCP-LISTEN:{BRIDGE_PORT},bind=127.0.0.1,fork,reuseaddr,nodelay"
    f" UNIX-CONNECT:{SOCKET_INSIDE}"
    ' & exec "$0" "$@"\' "$@"'
)


@dataclasses.dataclass(frozen=True)
class Confined:
    """One CLI start, confined: the options to start it with, and what to undo after."""

    options: ClaudeAgentOptions
    release: Callable[[], None]


class Confinement:
    """How every CLI of this daemon starts: in a sandbox or not, with a session key."""

    def __init__(
        self, agent: AgentConfig, gateway: ModelGateway, runtime_dir: Path, hidden: tuple[str, ...]
    ) -> None:
        self.sandbox = agent.sandbox
        self.network = agent.network
        self._gateway = gateway
        self._runtime = runtime_dir
        self._agent_env = {k: v for k, v in agent.env.items() if k not in DAEMONS_VARIABLES}
        self._ro_paths = agent.sandbox_ro_paths
        self.hidden = hidden  # the daemon's own files, masked where the system shows them
        self._launcher = runtime_dir / "launch-agent"
        self._bwrap = shutil.which("bwrap") or ""

    @property
    def confined(self) -> bool:
        return self.sandbox == "bwrap"

    def base_url(self) -> str:
        """The gateway as the CLI reaches it."""
        if self.confined and self.network == "none":
            return f"http://127.0.0.1:{BRIDGE_PORT}"
        assert self._gateway.tcp_url is not None
        return self._gateway.tcp_url

    def prepare(self) -> None:
        """Start-up, after `check`: write the launcher every sandboxed CLI starts with."""
        if not self.confined:
            return
        fill = {
            "@ARGS_ENV@": ARGS_ENV,
            "@CLI_ENV@": CLI_ENV,
            "@SDK_VARIABLES@": " ".join(SDK_VARIABLES),
            "@BWRAP@": self._bwrap,
            "@BRIDGE@": BRIDGE if self.network == "none" else ":",
        }
        script = LAUNCHER
        for placeholder, value in fill.items():
            script = script.replace(placeholder, value)
        self._launcher.write_text(script)
        self._launcher.chmod(stat.S_IRWXU)

    def confine(
        self,
        options: ClaudeAgentOptions,
        *,
        session_id: str | None,
        state_dir: str,
        marker_env: dict[str, str],
    ) -> Confined:
        """The options one CLI starts with: the gateway and a fresh session key (its
        usage counts for `session_id`), its own state folder and, sandboxed, the launcher
        with this CLI's bubblewrap arguments."""
        key = self._gateway.issue_key(session_id)
        cwd = str(options.cwd) if options.cwd else os.getcwd()
        inside = sandbox_environment(
            self._agent_env, self.base_url(), key, cwd, marker_env, confined=self.confined
        )
        if not self.confined:
            env = {**inside, "CLAUDE_CONFIG_DIR": state_dir}
            return Confined(
                dataclasses.replace(options, env=env), lambda: self._gateway.revoke(key)
            )
        cli = cli_binary(options.cli_path)
        args = self._runtime / f"agent-{uuid.uuid4().hex}.args"
        argv = [*namespaces(self.network), *self._view(cli, cwd)]
        for name, value in inside.items():
            argv += ["--setenv", name, value]
        fd = os.open(args, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(b"".join(a.encode() + b"\0" for a in argv))
        # The launcher's own environment: where to find its arguments and the CLI. The SDK
        # adds the daemon's environment, which the launcher leaves behind.
        env = {**marker_env, ARGS_ENV: str(args), CLI_ENV: cli, "CLAUDE_CONFIG_DIR": state_dir}

        def release() -> None:
            self._gateway.revoke(key)
            args.unlink(missing_ok=True)  # a CLI that never started

        return Confined(
            dataclasses.replace(options, cli_path=str(self._launcher), env=env), release
        )

    def _view(self, cli: str, cwd: str) -> list[str]:
        """The sandbox's filesystem: the system and the CLI read-only, the daemon's own
        files masked, a fresh /proc, /dev, /tmp and HOME, the workspace read-write."""
        view: list[str] = []
        for path in SYSTEM_PATHS:
            if os.path.islink(path):  # merged /usr: /bin -> usr/bin
                view += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                view += ["--ro-bind", path, path]
        for path in self.hidden:
            if _under(path, SYSTEM_PATHS) and os.path.exists(path):
                view += (
                    ["--tmpfs", path] if os.path.isdir(path) else ["--ro-bind", "/dev/null", path]
                )
        view += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", HOME_INSIDE]
        view += ["--ro-bind", cli, cli]
        for path in self._ro_paths:
            view += ["--ro-bind-try", path, path]
        view += ["--bind", cwd, cwd, "--chdir", cwd, "--hostname", "agent"]
        if self.network == "none":
            view += ["--bind", str(self._gateway.socket_path), SOCKET_INSIDE]
        return view


def namespaces(network: str) -> list[str]:
    flags = ["--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-uts"]
    flags += ["--unshare-cgroup-try"]
    if network == "none":
        flags += ["--unshare-net"]
    # --disable-userns: no user namespace inside, so no second sandbox to hide in.
    flags += ["--disable-userns"]
    return [*flags, "--die-with-parent", "--new-session", "--cap-drop", "ALL"]


def check(agent: AgentConfig) -> None:
    """Start-up: start one sandbox as every CLI will be started; raise SandboxUnavailable
    naming what to install or what blocks the namespaces. Never a silent fallback."""
    if agent.sandbox != "bwrap":
        return
    bwrap = shutil.which("bwrap")
    if not bwrap:
        raise SandboxUnavailable(
            "bubblewrap is not installed: install it (Debian/Ubuntu: apt-get install"
            ' bubblewrap), or set [agent] sandbox = "none" to run agents unconfined'
        )
    if agent.network == "none" and not shutil.which("socat"):
        raise SandboxUnavailable(
            "socat is not installed (agents reach the model through it with"
            ' [agent] network = "none"): apt-get install socat'
        )
    probe = [bwrap, *namespaces(agent.network), "--ro-bind", "/", "/", "--proc", "/proc"]
    try:
        done = subprocess.run(
            [*probe, "--", "true"], env={}, capture_output=True, timeout=CHECK_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        raise SandboxUnavailable("bubblewrap did not start a sandbox within 10 s") from None
    if done.returncode != 0:
        raise SandboxUnavailable(
            f"bubblewrap cannot create a sandbox here: {done.stderr.decode(errors='replace').strip()}."
            " Unprivileged user namespaces must be allowed: by the kernel"
            " (sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0,"
            " kernel.apparmor_restrict_unprivileged_userns=0) and by the service manager"
            " (the unit's RestrictNamespaces= must allow user mnt pid ipc uts cgroup net)."
            ' Or set [agent] sandbox = "none" to run agents unconfined.'
        )


def sandbox_environment(
    agent_env: dict[str, str],
    base_url: str,
    session_key: str,
    cwd: str,
    marker_env: dict[str, str],
    *,
    confined: bool,
) -> dict[str, str]:
    """Everything the agent's environment holds (DESIGN §12): documented, nothing secret.
    Unconfined, it is added to what the CLI inherits instead."""
    env = {"ANTHROPIC_BASE_URL": base_url, "ANTHROPIC_API_KEY": session_key}
    if confined:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": HOME_INSIDE,
            "TMPDIR": "/tmp",
            "LANG": os.environ.get("LANG") or "C.UTF-8",
            "SHELL": "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh",
            "PWD": cwd,
            **env,
        }
    # The operator's [agent.env] (visible to the agent), then what the daemon needs.
    return {**agent_env, **env, **marker_env}


def cli_binary(cli_path: str | Path | None) -> str:
    """The CLI the SDK would start: `cli_path`, else the SDK's bundled one, else `claude`."""
    if cli_path:
        return os.path.realpath(cli_path)
    import claude_agent_sdk

    bundled = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude"
    if bundled.is_file():
        return str(bundled.resolve())
    found = shutil.which("claude")
    return os.path.realpath(found) if found else "claude"


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == root or path.startswith(root + "/") for root in roots)
