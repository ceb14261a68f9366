"""The dashboard's access rules, query checks, API answers and HTTP server, on a fake
controller (the real daemon: tests/integration/test_dashboard_daemon.py; the page in a
browser: tests/integration/test_dashboard_browser.py)."""

from __future__ import annotations

import hmac
import json
import re
import socket
import stat
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from modcoord.actors.errors import ConfigError, InvalidMessageError
from modcoord.supervisor.daemon import dashboard as dash_mod
from modcoord.supervisor.daemon.config import DashboardSettings, load_config_dir
from modcoord.supervisor.daemon.dashboard import (
    COOKIE_PREFIX,
    PANELS,
    REFUSAL_LOG_INTERVAL_S,
    TILES,
    TOKEN_FILE,
    Dashboard,
)
from modcoord.supervisor.protocol.calls import HistoryParams

REPO = Path(__file__).resolve().parents[2]


class FakeSampler:
    module_rates_now = {"ed": 4.0}


class FakeHistory:
    def __init__(self) -> None:
        self.queries: list[tuple[list[str] | None, float]] = []
        self.sampler = FakeSampler()

    def query(self, metrics: list[str] | None, since_s: float) -> dict[str, Any]:
        self.queries.append((metrics, since_s))
        return {"resolution_s": 1, "since_s": since_s, "state": "ok", "now": 100.0,
                "columns": ["ts", "min", "max", "mean", "last"],
                "series": {"modules": [[99, 1, 1, 1, 1], [100, 2, 2, 2, 2]]}}


class FakeController:
    """What the dashboard asks the daemon's controller."""

    def __init__(self) -> None:
        self.history = FakeHistory()
        self.coordinator = None
        self.history_calls: list[HistoryParams] = []

    def status(self) -> dict[str, Any]:
        return {"mode": "HYBRID", "is_coordinating": True, "latency": float("nan")}

    def on_insights(self, params: Any) -> dict[str, Any]:
        return {"insights": [{"id": "all_clear"}], "recommendations": []}

    def on_history(self, params: HistoryParams) -> dict[str, Any]:
        self.history_calls.append(params)
        if params.metrics and "nope" in params.metrics:
            raise InvalidMessageError("history: unknown metric(s) nope; the history holds "
                                      "modules")
        answer: dict[str, Any] = self.history.query(params.metrics, params.since_s)
        return answer


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake_clock() -> Clock:
    return Clock()


@pytest.fixture
def dash(tmp_path: Path, fake_clock: Clock) -> Dashboard:
    d = Dashboard(FakeController(), DashboardSettings(port=0), tmp_path, clock=fake_clock)
    d.port = 4242  # as if bound (the cookie's name carries the port)
    return d


def q(d: Dashboard, path: str, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"token": d.token, **params}.items())
    return f"{path}?{query}"


# -- access -------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [
    "/", "/?token=", "/?token=wrong", "/api/live", "/api/status?token=x",
    "/static/app.js", "/nonexistent", "/api/history?since=abc",
])
def test_without_a_valid_token_every_request_gets_403_and_nothing_else(
        dash: Dashboard, target: str) -> None:
    response = dash.handle("GET", target)
    assert response.code == 403
    assert b"<" not in response.body and b"{" not in response.body  # no page, no data
    assert response.headers == ()  # no cookie
    assert dash.statistics().refused == 1 and dash.statistics().requests == 0


def test_a_token_that_is_nearly_right_or_repeated_is_refused(dash: Dashboard) -> None:
    assert dash.handle("GET", f"/?token={dash.token[:-1]}").code == 403
    assert dash.handle("GET", f"/?token={dash.token}x").code == 403
    assert dash.handle("GET", f"/?token={dash.token}&token={dash.token}").code == 403
    assert dash.handle("POST", "/api/live").code == 403  # the method is looked at later


def test_the_token_is_compared_in_constant_time(dash: Dashboard,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[bytes, bytes]] = []

    def compare(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return a == b

    monkeypatch.setattr(hmac, "compare_digest", compare)  # the one the dashboard calls
    assert dash.handle("GET", "/?token=guess").code == 403
    assert dash.handle("GET", "/api/live", f"{COOKIE_PREFIX}4242=guess2").code == 403
    assert seen == [(b"guess", dash.token.encode()), (b"guess2", dash.token.encode())]


def test_a_valid_token_sets_an_httponly_strict_cookie_that_then_grants_access(
        dash: Dashboard) -> None:
    page = dash.handle("GET", q(dash, "/"))
    assert page.code == 200 and page.content_type.startswith("text/html")
    assert b'<canvas' not in page.body and b"/static/app.js" in page.body
    cookies = [v for k, v in page.headers if k == "Set-Cookie"]
    assert cookies == [f"{COOKIE_PREFIX}4242={dash.token}; HttpOnly; SameSite=Strict; Path=/"]
    cookie = f"other=1; {COOKIE_PREFIX}4242={dash.token}"
    live = dash.handle("GET", "/api/live", cookie)
    assert live.code == 200 and json.loads(live.body)["status"]["mode"] == "HYBRID"
    assert live.headers == ()  # the cookie is set by the token request only
    # Another port's cookie (another daemon's dashboard on the same host) is not ours.
    assert dash.handle("GET", "/api/live", f"{COOKIE_PREFIX}4243={dash.token}").code == 403
    for asset in ("app.js", "chart.js", "style.css", "LICENSES.md"):
        assert dash.handle("GET", f"/static/{asset}", cookie).code == 200, asset


def test_refusals_are_counted_and_logged_at_most_once_a_minute(
        dash: Dashboard, fake_clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    logged: list[int] = []

    class Log:
        def bind(self, **fields: Any) -> Log:
            logged.append(fields["refused"])
            return self

        def warning(self, message: str) -> None:
            assert message == "dashboard request refused (no valid token)"

    monkeypatch.setattr(dash, "_log", Log())
    for _ in range(5):
        dash.handle("GET", "/")
    fake_clock.now += REFUSAL_LOG_INTERVAL_S
    dash.handle("GET", "/")
    assert dash.statistics().refused == 6
    assert logged == [1, 6]


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(("params", "needle"), [
    ({"since": "abc"}, "since: 'abc' is not a number of seconds"),
    ({"since": "0"}, "0 < since <= 2592000"),
    ({"since": "-5"}, "0 < since <= 2592000"),
    ({"since": "nan"}, "0 < since <= 2592000"),
    ({"since": "2592001"}, "0 < since <= 2592000"),
    ({"bogus": "1"}, "unknown query parameter(s) bogus for /api/history; it takes columns, "
                     "metric, since"),
    ({"metric": "nope"}, "unknown metric(s) nope; the history holds modules"),
    ({"metric": ""}, "metric: Expected `str` of length >= 1"),
    ({"columns": "ts,avg"}, "columns: 'ts,avg' is not a comma-separated list of distinct"),
    ({"columns": "ts,ts"}, "columns: 'ts,ts' is not"),
    ({"columns": ""}, "columns: '' is not"),
])
def test_a_bad_history_parameter_gets_400_saying_what_is_wrong(
        dash: Dashboard, params: dict[str, str], needle: str) -> None:
    response = dash.handle("GET", q(dash, "/api/history", **params))
    assert response.code == 400
    assert needle in json.loads(response.body)["error"]
    assert dash.statistics().bad_requests == 1


def test_repeated_since_unknown_parameters_elsewhere_paths_and_methods(
        dash: Dashboard) -> None:
    t = dash.token
    assert dash.handle("GET", f"/api/history?token={t}&since=1&since=2").code == 400
    response = dash.handle("GET", f"/api/live?token={t}&x=1")
    assert response.code == 400 and b"unknown query parameter(s) x for /api/live" in response.body
    assert dash.handle("GET", f"/?token={t}&x=1").code == 400
    assert dash.handle("GET", f"/nothing?token={t}").code == 404
    assert dash.handle("POST", f"/api/live?token={t}").code == 405
    assert dash.handle("GET", "/" + "a" * 5000).code == 414


def test_history_answers_the_history_call_with_its_metrics_and_since(
        dash: Dashboard) -> None:
    controller = dash.controller
    t = dash.token
    response = dash.handle("GET", f"/api/history?token={t}&since=900&metric=modules"
                                  "&metric=restarts")
    assert response.code == 200
    assert json.loads(response.body)["series"]["modules"][-1] == [100, 2, 2, 2, 2]
    assert controller.history_calls[-1].metrics == ["modules", "restarts"]
    assert controller.history_calls[-1].since_s == 900.0
    dash.handle("GET", f"/api/history?token={t}")
    assert controller.history_calls[-1].metrics is None
    assert controller.history_calls[-1].since_s == 3600.0
    trimmed = json.loads(dash.handle("GET", f"/api/history?token={t}&columns=ts,mean").body)
    assert trimmed["columns"] == ["ts", "mean"]
    assert trimmed["series"]["modules"] == [[99, 1], [100, 2]]
    assert dash.handle("GET", f"/api/history?token={t}&columns=ts&columns=mean").code == 400
    single = json.loads(dash.handle("GET", f"/api/history?token={t}&columns=last").body)
    assert single["series"]["modules"] == [[1], [2]]


def test_live_carries_status_newest_figures_and_no_nan(dash: Dashboard) -> None:
    body = json.loads(dash.handle("GET", q(dash, "/api/live")).body)
    assert body["status"]["latency"] is None  # NaN is not JSON
    insights = json.loads(dash.handle("GET", q(dash, "/api/insights")).body)
    assert insights["insights"] == [{"id": "all_clear"}]
    assert body["latest"] == {"modules": 2}
    assert dash.controller.history.queries[-1] == (None, dash_mod.LIVE_SINCE_S)


def test_a_failing_producer_gets_500_and_is_counted(dash: Dashboard) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("engine gone")

    dash.controller.status = broken
    response = dash.handle("GET", q(dash, "/api/status"))
    assert response.code == 500 and b"engine gone" in response.body
    assert dash.statistics().errors == 1


# -- the layout: one list, the same in the docs ------------------------------------------


def test_layout_lists_every_panel_tile_and_range(dash: Dashboard) -> None:
    body = json.loads(dash.handle("GET", q(dash, "/api/layout")).body)
    assert [p["id"] for p in body["panels"]] == [p.id for p in PANELS]
    assert [t["id"] for t in body["tiles"]] == [t.id for t in TILES]
    assert [r["seconds"] for r in body["ranges"]] == [900, 3600, 21_600, 86_400, 2_592_000]
    assert all(t.source.split(":")[0] in ("history", "status") for t in TILES)


def _doc_rows(section: str) -> dict[str, tuple[str, str, str]]:
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+?) \| ([^|]*?) \| (.+?) \|$", section, re.M)
    return {ident: (title.strip(), unit.strip().strip("`"), what.strip())
            for ident, title, unit, what in rows}


def test_reference_lists_the_same_panels_and_tiles() -> None:
    text = (REPO / "docs" / "REFERENCE.md").read_text()
    section = text.split("### Dashboard panels", 1)[1].split("\n### ", 1)[0]
    charts, tiles = section.split("Live figures", 1)
    assert _doc_rows(charts) == {
        p.id: (p.title, p.unit, ", ".join(f"`{m}`" for m in p.metrics)) for p in PANELS}
    assert _doc_rows(tiles) == {t.id: (t.label, t.unit, f"`{t.source}`") for t in TILES}


# -- config --------------------------------------------------------------------------------


@pytest.mark.parametrize(("section", "key", "needle"), [
    ({"host": "example.com"}, "dashboard.host", "must be an IP address"),
    ({"port": 70000}, "dashboard.port", "less than or equal to 65535"),
    ({"enabled": "yes"}, "dashboard.enabled", "valid boolean"),
    ({"colour": "blue"}, "dashboard.colour", "unknown key"),
])
def test_a_bad_dashboard_key_names_file_key_and_problem(
        tmp_path: Path, section: dict[str, Any], key: str, needle: str) -> None:
    from daemon_harness import copy_configs, edited_yaml

    configs = copy_configs(tmp_path / "configs")
    daemon_yaml = configs / "daemon.yaml"
    daemon_yaml.write_text(edited_yaml(daemon_yaml, {"dashboard": section}))
    with pytest.raises(ConfigError) as info:
        load_config_dir(configs)
    assert str(daemon_yaml) in str(info.value) and key in str(info.value)
    assert needle in str(info.value)


def test_the_packaged_config_has_the_dashboard_off_on_loopback() -> None:
    settings = load_config_dir().daemon.dashboard
    assert (settings.enabled, settings.host, settings.port) == (False, "127.0.0.1", 9465)
    assert DashboardSettings(host="::1").host == "::1"


# -- the HTTP server -----------------------------------------------------------------------


def _get(url: str, cookie: str | None = None) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def test_server_on_a_free_port_serves_with_the_token_only(tmp_path: Path) -> None:
    d = Dashboard(FakeController(), DashboardSettings(enabled=True, port=0), tmp_path)
    assert d.status()["enabled"] is False and d.url() is None
    assert d.start() is True
    try:
        assert d.port and d.port > 0
        token_file = tmp_path / TOKEN_FILE
        assert token_file.read_text().strip() == d.token
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        code, body, _ = _get(d.url(with_token=False) or "")
        assert code == 403 and b"forbidden" in body
        code, body, headers = _get(d.url() or "")
        assert code == 200 and b"<title>modcoord dashboard</title>" in body
        assert "HttpOnly" in headers["Set-Cookie"]
        assert headers["Cache-Control"] == "no-store"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        status = d.status()
        assert status["enabled"] is True and status["url"] == f"http://127.0.0.1:{d.port}/"
        assert d.token not in json.dumps(status)  # status never shows the token
        again = d.enable()
        assert again["started"] is False and again["url"] == d.url()
    finally:
        d.stop()
    assert not (tmp_path / TOKEN_FILE).exists()
    assert d.status()["enabled"] is False


def test_a_port_in_use_is_reported_not_raised_and_enable_tries_again(
        tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    d = Dashboard(FakeController(), DashboardSettings(enabled=True, port=port), tmp_path)
    try:
        assert d.start() is False
        assert d.error is not None
        assert f"127.0.0.1:{port}" in d.error and "dashboard.port" in d.error
        status = d.status()
        assert status["enabled"] is False and status["error"] == d.error
        answer = d.enable()
        assert answer["url"] is None and answer["error"] == d.error
        holder.close()
        answer = d.enable()
        assert answer["error"] is None and answer["started"] is True
        assert answer["url"] == f"http://127.0.0.1:{port}/?token={d.token}"
        assert d.status()["error"] is None
    finally:
        holder.close()
        d.stop()


def test_a_token_file_that_cannot_be_written_is_reported_and_nothing_served(
        tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir()
    (runtime / TOKEN_FILE).mkdir()  # a directory where the file goes: cannot be replaced
    d = Dashboard(FakeController(), DashboardSettings(enabled=True, port=0), runtime)
    assert d.start() is False
    assert d.error is not None and "cannot write the dashboard's token file" in d.error
    assert d.status()["enabled"] is False and d.url() is None
