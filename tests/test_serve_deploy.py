"""deploy/ uses only metric names the service exports (serve.metrics.METRICS), and the docs
list every one of them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from balloonctl.serve.metrics import METRICS

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
# Series Prometheus itself makes: a histogram's parts, and the scrape's own `up`.
_SUFFIXES = ("_bucket", "_count", "_sum")
_PROMETHEUS_OWN = {"up"}
_NAME = re.compile(r"\b(balloonctl_[a-z0-9_]+)")


def exported() -> set[str]:
    names = set(METRICS)
    for name, (kind, _) in METRICS.items():
        if kind == "histogram":
            names |= {name + s for s in _SUFFIXES}
    return names


def exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query") and isinstance(value, str):
                yield value
            else:
                yield from exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from exprs(item)


def alert_exprs() -> list[str]:
    text = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    return [line.split("expr:", 1)[1] for line in text.splitlines() if "expr:" in line]


def test_alert_rules_use_exported_metrics_only() -> None:
    found = alert_exprs()
    assert len(found) >= 5
    for expr in found:
        names = set(_NAME.findall(expr))
        assert names <= exported(), (expr, names - exported())
        bare = set(re.findall(r"\b([a-z_]+)\{", expr)) - names
        assert bare <= _PROMETHEUS_OWN, bare


def test_the_alerts_the_issue_asks_for_are_there() -> None:
    text = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    for alert in ("VmSwapping", "BalloonStuck", "HostMemoryLow", "VmUnreachable",
                  "ForeignWriter"):
        assert f"alert: Balloonctl{alert}" in text


def test_dashboard_uses_exported_metrics_only() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "balloonctl.json").read_text())
    used = {name for expr in exprs(dashboard) for name in _NAME.findall(expr)}
    assert len(used) >= 15
    assert used <= exported(), used - exported()


def test_docs_list_every_metric() -> None:
    doc = (ROOT / "docs" / "serve.md").read_text()
    missing = [name for name in METRICS if f"`{name}`" not in doc]
    assert missing == []


def test_systemd_unit_runs_serve() -> None:
    unit = (DEPLOY / "systemd" / "balloonctl-serve.service").read_text()
    assert re.search(r"^ExecStart=\S*balloonctl serve\b", unit, re.M)
    assert "RuntimeDirectoryMode=0700" in unit
