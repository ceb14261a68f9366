"""The Grafana dashboard against a real daemon: every metric its queries read appears in
the ``/metrics`` scrape of a daemon fed by real module processes (one publishing and
coordinating, one subscribed), and ``modcoord grafana`` prints the shipped dashboard."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import DaemonFactory, DaemonProcess, run_cli, wait_for
from grafana_check import DASHBOARD, PROMETHEUS_ADDED, exprs, load, metric_names
from metrics_check import parse_text

_MODULE = textwrap.dedent("""
    import sys, time
    from modcoord.supervisor import connect

    class Module:
        def __init__(self, module_id, subscribe):
            self.module_id = self.name = module_id
            self.supported_modes = ["MANUAL", "HYBRID", "FULLY_AUTO"]
            self.subscribe = subscribe

        def on_mode_change(self, mode, strategy, context):
            return {"ok": True}

        def on_batch(self, batch):
            pass

    role = sys.argv[2]
    with connect(runtime_dir=sys.argv[1], timeout=10, reconnect=False) as client:
        if role == "sink":
            client.register(Module("grafana-sink", ["grafana-pub"])).get(10)
        else:
            client.register(Module("grafana-pub", [])).get(10)
        print("registered", flush=True)
        n = 0
        while True:
            if role == "pub":
                for _ in range(20):
                    client.publish("grafana-pub", f"k{n % 30}", {"n": n})
                    n += 1
                client.coordinate("HYBRID", {"round": n % 3}).get(10)
            time.sleep(0.05)  # quiet-period: the module's pace
""")


@pytest.fixture
def fed_daemon(daemon_factory: DaemonFactory) -> Iterator[DaemonProcess]:
    daemon = daemon_factory(configs={"daemon": {"metrics": {"enabled": True, "port": 0}}})
    procs = []
    for role in ("sink", "pub"):
        proc = subprocess.Popen([sys.executable, "-c", _MODULE, str(daemon.runtime_dir), role],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "registered", proc.stderr
    yield daemon
    for proc in procs:
        proc.kill()
        proc.communicate(timeout=10)


def _scrape(daemon: DaemonProcess) -> set[str]:
    status = json.loads(daemon.cli("status", "--json").out)
    port = int(status["daemon"]["metrics_port"])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {sample.name for family in parse_text(text).values() for sample in family.samples}


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_every_metric_the_dashboard_reads_is_in_a_real_scrape(
        fed_daemon: DaemonProcess) -> None:
    wanted = set().union(*(metric_names(e) for _, e in exprs(load()))) - PROMETHEUS_ADDED
    seen: set[str] = set()

    def all_there() -> bool:
        seen.clear()
        seen.update(_scrape(fed_daemon))
        return wanted <= seen

    try:
        wait_for(all_there, 30, interval=0.5, message="every dashboard metric in /metrics")
    except AssertionError:
        raise AssertionError(f"not in the scrape: {sorted(wanted - seen)}") from None
    assert "modcoord_adaptive_effective_seconds" in seen  # the new families are there
    assert "modcoord_resources_memory_level" in seen


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_modcoord_grafana_prints_and_writes_the_shipped_dashboard(tmp_path: Path) -> None:
    shipped = DASHBOARD.read_text(encoding="utf-8")
    printed = run_cli("grafana", runtime_dir=tmp_path / "run")
    assert printed.code == 0, printed.err
    assert printed.out == shipped
    target = tmp_path / "dash.json"
    written = run_cli("grafana", "--output", str(target), runtime_dir=tmp_path / "run")
    assert written.code == 0 and str(target) in written.err, written
    assert target.read_text(encoding="utf-8") == shipped
    bad = run_cli("grafana", "-o", str(tmp_path / "missing" / "d.json"),
                  runtime_dir=tmp_path / "run")
    assert bad.code == 1 and "cannot write" in bad.err and bad.out == "", bad
