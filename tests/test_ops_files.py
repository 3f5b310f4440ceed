"""What an ops team loads beside the daemon: the Prometheus alert rules (checked and
unit-tested with promtool) and the Grafana dashboard (every panel's metric exists in a
real /metrics scrape, and every metric the daemon exports has a panel)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from tests.conftest import Daemon, api_for

ROOT = Path(__file__).resolve().parent.parent
METRIC = re.compile(r"\b(agent_webkit_[a-z0-9_]+)")
SUFFIXES = ("_bucket", "_sum", "_count")


def promtool(*args: str, cwd: Path = ROOT) -> str:
    assert shutil.which("promtool"), "promtool is missing (Debian package prometheus)"
    proc = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_the_alert_rules_are_valid_and_fire_when_they_should() -> None:
    assert "SUCCESS" in promtool("check", "rules", "conf/alerts.yml")
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml", cwd=ROOT / "tests")


def family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


async def test_the_dashboard_and_the_alerts_use_only_metrics_the_daemon_exports(daemon: Daemon) -> None:
    async with api_for(daemon, token=None) as api:
        _, scrape, _ = await api.request("GET", "/metrics")
    exported = {line.split()[2] for line in scrape.splitlines() if line.startswith("# HELP ")}
    assert len(exported) > 20
    dashboard = json.loads((ROOT / "conf" / "grafana-dashboard.json").read_text())
    charted = {family(m) for panel in dashboard["panels"] for target in panel["targets"]
               for m in METRIC.findall(target["expr"])}
    assert charted - exported == set(), "panels of metrics the daemon does not export"
    assert exported - charted == set(), "metrics without a panel"
    alerted = {family(m) for m in METRIC.findall((ROOT / "conf" / "alerts.yml").read_text())}
    assert alerted - exported == set(), "alerts on metrics the daemon does not export"
