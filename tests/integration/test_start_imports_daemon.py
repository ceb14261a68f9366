"""Start to ready imports only what start needs (``scripts/bench`` figure 12): a real daemon
started in a fresh interpreter (the same ``run`` that ``modcoord start`` calls) has, at the
moment it reports ready, not imported ``prometheus_client`` (metrics off) nor ``sqlite3``
(the history opens right after readiness); with metrics on it has imported
``prometheus_client`` (the probe can tell). Afterwards the history opens and a real client
process reads it."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import copy_configs, edited_yaml, run_cli, wait_for

# Runs the daemon in this (main) thread; the readiness report is wrapped so that it
# records the modules loaded at that very moment, then the daemon is stopped.
_DAEMON = textwrap.dedent("""
    import json, os, signal, sys, threading
    from pathlib import Path
    from modcoord.supervisor.daemon import process

    out, runtime, configs, state = sys.argv[1:5]
    stop_after = sys.argv[5] == "stop"
    real_ok = process._Ready.ok

    def ok(self, pid, sock):
        loaded = sorted(sys.modules)
        Path(out).write_text(json.dumps(loaded))
        real_ok(self, pid, sock)
        if stop_after:
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()

    process._Ready.ok = ok
    r, w = os.pipe()
    options = process.DaemonOptions(runtime_dir=Path(runtime), config_dir=Path(configs),
                                    state_dir=Path(state))
    sys.exit(process.run(options, ready_fd=w))
""")


def _loaded_at_ready(tmp_path: Path, configs: Path, stop: bool = True
                     ) -> tuple[set[str], subprocess.Popen[str]]:
    out = tmp_path / "modules.json"
    proc = subprocess.Popen(
        [sys.executable, "-c", _DAEMON, str(out), str(tmp_path / "run"), str(configs),
         str(tmp_path / "state"), "stop" if stop else "stay"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: out.exists() and out.read_text(), timeout=30,
             message="the daemon to report ready")
    return set(ast.literal_eval(out.read_text())), proc


def _configs(tmp_path: Path, metrics: bool) -> Path:
    configs = copy_configs(tmp_path / "configs")
    daemon_yaml = configs / "daemon.yaml"
    daemon_yaml.write_text(edited_yaml(daemon_yaml, {"metrics": {
        "enabled": metrics, "port": 0}}))
    return configs


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_ready_before_prometheus_and_sqlite(tmp_path: Path) -> None:
    loaded, proc = _loaded_at_ready(tmp_path, _configs(tmp_path, metrics=False))
    assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
    assert "modcoord.supervisor.daemon.server" in loaded  # the probe saw the start
    for module in ("prometheus_client", "sqlite3", "modcoord.supervisor.daemon.exposition",
                   "modcoord.supervisor.daemon.metrics_endpoint",
                   "modcoord.supervisor.daemon.history", "http.server"):
        assert module not in loaded, module


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_with_metrics_on_prometheus_is_there_at_ready(tmp_path: Path) -> None:
    loaded, proc = _loaded_at_ready(tmp_path, _configs(tmp_path, metrics=True))
    assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
    assert "prometheus_client" in loaded


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_the_history_opens_after_ready_and_answers(tmp_path: Path) -> None:
    _, proc = _loaded_at_ready(tmp_path, _configs(tmp_path, metrics=False), stop=False)
    runtime = tmp_path / "run"
    try:
        # A real client process (the CLI), right after ready: the call waits for the
        # history to settle, and is answered by the open (still empty) history rather
        # than refused as off.
        result = run_cli("history", "--metric", "modules", "--since", "1m", "--json",
                         runtime_dir=runtime)
        assert "history is off" not in result.err, result.err
        assert result.code == 0 or "holds nothing yet" in result.err, result.err
        status: Any = wait_for(lambda: _history_state(runtime) == "ok", timeout=20,
                               message="the history to be open")
        assert status
        assert (tmp_path / "state" / "history.sqlite3").exists()
    finally:
        run_cli("stop", runtime_dir=runtime)
        proc.wait(30)


def _history_state(runtime: Path) -> str:
    import json

    result = run_cli("status", "--json", runtime_dir=runtime)
    return str(json.loads(result.out)["history"]["state"]) if result.code == 0 else ""
