"""The dashboard through the real daemon and real module processes: ``modcoord
dashboard`` turns it on in a running daemon and prints a URL whose token opens the page
and its API; without it everything is 403; ``status`` shows the page's address (never the
token); a port in use leaves the daemon running, says so in ``status`` and the log and
makes ``modcoord dashboard`` exit 1 (the page in a browser:
test_dashboard_browser.py)."""

from __future__ import annotations

import json
import socket
import stat
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from daemon_harness import DaemonFactory, DaemonProcess, records, wait_for
from dashboard_harness import dashboard_url, http_get, publisher

from modcoord.supervisor.daemon.dashboard import COOKIE_PREFIX, PANELS, TILES, TOKEN_FILE

pytestmark = pytest.mark.integration


def _status(daemon: DaemonProcess) -> dict[str, Any]:
    result = daemon.cli("status", "--json")
    assert result.code == 0, result.err
    answer: dict[str, Any] = json.loads(result.out)
    return answer


def test_dashboard_command_turns_the_page_on_and_its_token_opens_it(
        daemon: DaemonProcess) -> None:
    before = _status(daemon)["dashboard"]
    assert before["enabled"] is False and before["url"] is None  # off by default
    assert not (daemon.runtime_dir / TOKEN_FILE).exists()

    answer = dashboard_url(daemon)
    assert answer["ok"] is True and answer["started"] is True and answer["error"] is None
    url = answer["url"]
    token = parse_qs(urlsplit(url).query)["token"][0]
    assert len(token) >= 40
    token_file = daemon.runtime_dir / TOKEN_FILE
    assert token_file.read_text().strip() == token
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(daemon.runtime_dir.stat().st_mode) == 0o700

    address = answer["address"]
    assert url == f"{address}?token={token}" and address.startswith("http://127.0.0.1:")
    status = _status(daemon)
    assert status["dashboard"]["enabled"] is True and status["dashboard"]["url"] == address
    assert token not in json.dumps(status)  # status never carries the token

    # Without the token: 403 and nothing else, for the page, an asset and the API.
    for path in ("", "static/app.js", "api/live", "api/status", "api/history?since=60"):
        code, body, headers = http_get(address + path)
        assert code == 403, path
        assert b"{" not in body and b"<" not in body and "Set-Cookie" not in headers, path
    assert http_get(address + "?token=" + token[:-1] + "x")[0] == 403

    # With it: the page, and a cookie for the page's own requests.
    code, body, headers = http_get(url)
    assert code == 200 and b"<title>modcoord dashboard</title>" in body
    cookie = headers["Set-Cookie"].split(";", 1)[0]
    port = urlsplit(address).port
    assert cookie == f"{COOKIE_PREFIX}{port}={token}"
    assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
    code, body, _ = http_get(address + "api/status", cookie)
    assert code == 200 and json.loads(body)["pid"] == daemon.pid
    code, body, _ = http_get(address + "api/layout", cookie)
    assert [p["id"] for p in json.loads(body)["panels"]] == [p.id for p in PANELS]
    assert _status(daemon)["dashboard"]["refused"] >= 6

    # Asked again, it is the same page (not restarted, same token).
    again = dashboard_url(daemon)
    assert again["started"] is False and again["url"] == url

    # A bad query parameter: 400 saying what is wrong.
    code, body, _ = http_get(address + "api/history?since=forever", cookie)
    assert code == 400
    assert "since: 'forever' is not a number of seconds" in json.loads(body)["error"]
    code, body, _ = http_get(address + "api/history?metric=nope&since=60", cookie)
    assert code == 400 and "unknown metric(s) nope" in json.loads(body)["error"]

    daemon.stop()
    assert not token_file.exists()  # removed at stop


def test_live_api_shows_real_modules_their_rates_and_the_sampled_figures(
        daemon: DaemonProcess) -> None:
    address, cookie = _open(daemon)
    with publisher(daemon, "flood", per_tick=20):

        def flood_row() -> dict[str, Any] | None:
            code, body, _ = http_get(address + "api/live", cookie)
            assert code == 200
            live = json.loads(body)
            rows = [m for m in live["modules"] if m["module_id"] == "flood"]
            if rows and (rows[0]["updates_per_s"] or 0) > 50 and \
                    (live["latest"].get("updates_in_per_s") or 0) > 50:
                return {"row": rows[0], "live": live}
            return None

        seen = wait_for(flood_row, timeout=30, interval=0.5,
                        message="flood's rate in /api/live")
    row, live = seen["row"], seen["live"]
    assert row["name"] == "flood" and row["idle_s"] is not None and row["idle_s"] < 5
    assert live["status"]["modules"] >= 1
    code, body, _ = http_get(address + "api/insights", cookie)
    assert code == 200 and [i for i in json.loads(body)["insights"] if "recommendation" in i]
    # Every metric a panel or tile names exactly is one the history really samples.
    code, body, _ = http_get(address + "api/history?since=120", cookie)
    assert code == 200
    held = set(json.loads(body)["series"])
    named = {m for p in PANELS for m in p.metrics if "*" not in m} | {
        t.source.split(":", 1)[1] for t in TILES if t.source.startswith("history:")}
    assert named <= held, named - held
    assert "module.flood.updates_per_s" in held


def _open(daemon: DaemonProcess) -> tuple[str, str]:
    """Turn the page on; ``(address, cookie)``."""
    answer = dashboard_url(daemon)
    code, _, headers = http_get(answer["url"])
    assert code == 200
    return answer["address"], headers["Set-Cookie"].split(";", 1)[0]


def test_a_port_in_use_leaves_the_daemon_running_and_is_reported(
        daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        d = daemon_factory(root=tmp_path / "d", configs={
            "daemon": {"dashboard": {"enabled": True, "port": port}}})
        status = _status(d)
        assert status["is_coordinating"] is True  # the daemon runs without the page
        dash = status["dashboard"]
        assert dash["enabled"] is False and dash["configured"] is True
        assert f"127.0.0.1:{port}" in dash["error"] and "dashboard.port" in dash["error"]
        wait_for(lambda: records(d, message="dashboard cannot listen", port=port),
                 message="the log record")
        result = d.cli("dashboard")
        assert result.code == 1
        assert f"cannot serve the dashboard on 127.0.0.1:{port}" in result.err
        result = d.cli("dashboard", "--json")
        answer = json.loads(result.out)
        assert result.code == 1 and answer["ok"] is False and answer["exit_code"] == 1
        assert "Address already in use" in answer["error"]
    finally:
        holder.close()
    answer = dashboard_url(d)  # the port is free now: trying again works
    assert answer["started"] is True and answer["address"] == f"http://127.0.0.1:{port}/"
    assert _status(d)["dashboard"]["error"] is None


def test_enabled_in_daemon_yaml_the_page_is_served_from_the_start(
        daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    d = daemon_factory(root=tmp_path / "d", configs={
        "daemon": {"dashboard": {"enabled": True, "port": 0}}})
    dash = _status(d)["dashboard"]
    assert dash["enabled"] is True and dash["port"] > 0 and dash["error"] is None
    token = (d.runtime_dir / TOKEN_FILE).read_text().strip()
    assert http_get(f"{dash['url']}?token={token}")[0] == 200
    assert http_get(dash["url"])[0] == 403


def test_a_bad_dashboard_key_refuses_the_start_naming_file_and_key(
        daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path / "d", configs={"daemon": {"dashboard": {"host": "example.com"}}})
    result = d.cli("start", "--config-dir", str(d.config_dir), "--state-dir",
                   str(tmp_path / "state"))
    assert result.code == 78
    assert "daemon.yaml" in result.err and "dashboard.host" in result.err
    assert "must be an IP address" in result.err


def test_open_hands_the_url_to_the_web_browser(daemon: DaemonProcess, tmp_path: Path) -> None:
    """``--open`` gives the URL with its token to the browser ``$BROWSER`` names (here a
    script that writes down what it was given)."""
    from daemon_harness import run_cli

    opened = tmp_path / "opened.txt"
    fake = tmp_path / "fake-browser"
    fake.write_text(f"#!/bin/sh\nprintf '%s' \"$1\" > {opened}\n")
    fake.chmod(0o755)
    result = run_cli("dashboard", "--open", "--json", runtime_dir=daemon.runtime_dir,
                     env={"BROWSER": f"{fake} %s"})
    assert result.code == 0, result.err
    answer = json.loads(result.out)
    assert answer["opened"] is True
    assert opened.read_text() == answer["url"] and "?token=" in answer["url"]
