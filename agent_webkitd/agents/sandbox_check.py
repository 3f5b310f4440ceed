"""`agent-webkitd check-sandbox`: start one sandbox exactly as a CLI would be started
with this config, run probes inside it instead of the CLI, and say what an agent can
reach (DESIGN §12). For operators: after an install, a kernel or unit change.
"""

from __future__ import annotations

import asyncio
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import structlog
from claude_agent_sdk import ClaudeAgentOptions

from ..config import Config
from .gateway import ModelGateway
from .sandbox import BRIDGE_PORT, Confinement

# Never inside a sandbox, whatever the daemon's own paths are.
EXPECTED_HIDDEN = ("/root", "/var/lib", "/run/postgresql", "/var/run", "/run/systemd")
# Runs as "the CLI": every line is `<probe> <finding>`.
PROBES = r"""
echo "uid $(id -u)"
echo "capabilities $(sed -n 's/^CapEff:\t//p' /proc/self/status)"
echo "environment $(env | cut -d= -f1 | sort | tr '\n' ' ')"
echo "processes $(ls /proc | grep -c '^[0-9]')"
daemon_port=$1 model_port=$2
shift 2
for path in "$@"; do
    if [ -e "$path" ] && [ -n "$(ls -A "$path" 2>/dev/null)" ]; then echo "visible $path"; else echo "hidden $path"; fi
done
for target in 1.1.1.1/443 127.0.0.1/$daemon_port 127.0.0.1/$model_port; do
    if timeout 3 bash -c "echo > /dev/tcp/$target" 2>/dev/null; then echo "reaches $target"; else echo "blocked $target"; fi
done
"""


async def check_sandbox(
    config: Config, hidden: tuple[str, ...], probed: tuple[str, ...]
) -> dict[str, Any]:
    """Probe a sandbox built from `config` (masking `hidden`) for the `probed` paths, the
    environment, processes and the network; what it found, and whether it holds."""
    with tempfile.TemporaryDirectory(prefix="agent-webkitd-check-") as tmp:
        root = Path(tmp)
        (root / "workspace").mkdir()
        (root / "state").mkdir()
        quiet = structlog.wrap_logger(structlog.PrintLogger(io.StringIO()))  # stdout is the report
        gateway = ModelGateway(
            "http://127.0.0.1:9", None, root / "model.sock", tcp=True, logger=quiet
        )
        await gateway.start()
        try:
            confinement = Confinement(config.agent, gateway, root, hidden)
            confinement.prepare()
            options = ClaudeAgentOptions(cwd=str(root / "workspace"), cli_path="/bin/sh")
            confined = confinement.confine(
                options, session_id=None, state_dir=str(root / "state"), marker_env={}
            )
            env = {**os.environ, **confined.options.env}
            ports = (str(config.server.port), str(BRIDGE_PORT))
            command = confined.options.cli_path or "/bin/sh"
            proc = await asyncio.create_subprocess_exec(
                command, "-c", PROBES, "probe", *ports, *probed, env=env, cwd=root / "workspace",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await proc.communicate()
            confined.release()
        finally:
            await gateway.stop()
    return judge(
        config, out.decode(errors="replace"), err.decode(errors="replace"), proc.returncode
    )


def judge(config: Config, out: str, err: str, code: int | None) -> dict[str, Any]:
    findings = [line.split(" ", 1) for line in out.splitlines() if " " in line]
    problems = []
    if code != 0:
        problems.append(f"the sandbox did not run (exit {code}): {err.strip()[-500:]}")
    for probe, finding in findings:
        if probe == "visible":
            problems.append(f"the agent can read {finding}")
        elif probe == "capabilities" and finding.strip("0"):
            problems.append(f"the agent has capabilities {finding}")
        elif probe == "environment" and any(
            word in name for name in finding.split() for word in ("TOKEN", "DATABASE", "SECRET")
        ):
            problems.append(f"the agent's environment holds {finding}")
        elif probe == "reaches" and config.agent.network == "none":
            if not finding.endswith(f"/{BRIDGE_PORT}"):
                problems.append(f"the agent reaches {finding} with network = none")
    return {
        "sandbox": config.agent.sandbox,
        "network": config.agent.network,
        "ok": not problems,
        "problems": problems,
        "findings": [" ".join(f) for f in findings],
    }
