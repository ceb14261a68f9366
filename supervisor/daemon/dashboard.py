"""The dashboard page: live figures, charts of the history, insights, modules, actors and
the adaptive parameters, served by the daemon over HTTP (``daemon.yaml`` ``dashboard``).

- What the page shows (:data:`PANELS`, the history charts, and :data:`TILES`, the live
  figures: the ONE list, re-exported here) is in :mod:`.dashboard_panels`.
- Access: a random token (:func:`secrets.token_urlsafe`), new for each daemon run, kept
  in ``dashboard.token`` (0600) in the 0700 runtime directory; the URL ``modcoord
  dashboard`` prints carries it (``?token=``). The first valid request sets an HttpOnly,
  SameSite=Strict cookie so that the page's own requests carry it. Any request without a
  valid token (query or cookie; compared in constant time) gets ``403`` and a one-line
  body, nothing else: no page, no asset, no data. Refusals are counted in ``status``
  (``dashboard.refused``) and logged (at most once a minute).
- :class:`Dashboard` owns the HTTP server (a ``ThreadingHTTPServer`` on its own thread,
  like the metrics endpoint). It binds only where configured (127.0.0.1 by default).
  Failing to bind (port in use) never stops the daemon: :meth:`Dashboard.start` logs it,
  ``status`` ``dashboard.error`` says it, and ``modcoord dashboard`` (the ``dashboard``
  call, :meth:`Dashboard.enable`) tries again and reports it (exit 1).
- The JSON API (same token): ``/api/layout``, ``/api/live`` (status, the newest sampled
  figures and the module table, in one answer: what the page polls every 2 s),
  ``/api/status``, ``/api/insights`` (polled every 10 s), ``/api/history?since=S&metric=M`` (the
  ``history`` call's answer; ``since`` in seconds, ``columns`` a subset of the point's
  columns). A query parameter that is unknown,
  repeated or out of range gets ``400`` with a message naming it and the accepted values.

The page's files (HTML, CSS and the JavaScript, which draws its charts itself on
``<canvas>``: no library, no CDN) are package data in ``data/dashboard/``, with
``LICENSES.md`` stating their licence.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import math
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, urlsplit

from loguru import logger

from modcoord.actors.errors import InvalidMessageError, ModcoordError
from modcoord.supervisor.daemon.dashboard_panels import (
    HISTORY_COLUMNS,
    INSIGHTS_POLL_MS,
    PANELS,
    POLL_INTERVAL_MS,
    RANGES,
    TILES,
    Panel,
    Tile,
    layout,
)
from modcoord.supervisor.protocol.calls import HISTORY_MAX_SINCE_S, decode_params
from modcoord.supervisor.protocol.paths import UnsafePathError, write_file_atomic

if TYPE_CHECKING:
    from modcoord.supervisor.daemon.config import DashboardSettings

__all__ = [
    "ASSETS_DIR",
    "COOKIE_PREFIX",
    "HISTORY_COLUMNS",
    "INSIGHTS_POLL_MS",
    "LIVE_SINCE_S",
    "PANELS",
    "POLL_INTERVAL_MS",
    "RANGES",
    "TILES",
    "TOKEN_FILE",
    "Dashboard",
    "Panel",
    "Response",
    "Tile",
    "layout",
]

TOKEN_FILE: Final = "dashboard.token"
"""The token's file in the runtime directory (mode 0600; removed when the daemon stops)."""
COOKIE_PREFIX: Final = "modcoord_dashboard_"
"""The cookie's name is this and the port (cookies are shared by every port of a host)."""
LIVE_SINCE_S: Final = 5.0
"""``/api/live`` takes the newest sampled figures from this many seconds of history."""
MAX_REQUEST_TARGET_CHARS: Final = 4096
"""A longer request line target gets 414 (no query of the page comes near it)."""
REFUSAL_LOG_INTERVAL_S: Final = 60.0
"""Refused requests are logged at most this often (each is counted)."""
ASSETS_DIR: Final = Path(__file__).resolve().parent / "data" / "dashboard"
"""The page's files (package data)."""
_CONTENT_TYPES: Final = {".html": "text/html; charset=utf-8",
                         ".js": "text/javascript; charset=utf-8",
                         ".css": "text/css; charset=utf-8",
                         ".md": "text/plain; charset=utf-8"}
_SECURITY_HEADERS: Final = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; "
     "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
)


# -- the requests ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    """An HTTP answer: status code, body, content type and extra headers."""

    code: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


_FORBIDDEN = Response(403, b"forbidden: open the URL that 'modcoord dashboard' prints\n")


def _json(value: Any) -> Response:
    """``value`` as JSON; NaN and infinities (not JSON) become null (the slow path, taken
    only when the fast one finds one)."""
    try:
        text = json.dumps(value, default=str, allow_nan=False, separators=(",", ":"))
    except ValueError:
        text = json.dumps(_finite(value), default=str, allow_nan=False,
                          separators=(",", ":"))
    return Response(200, text.encode(), "application/json")


def _bad(message: str) -> Response:
    return Response(400, json.dumps({"error": message}).encode(), "application/json")


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities (not JSON) replaced by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


@dataclass(frozen=True)
class DashboardStatistics:
    """The dashboard's counters: requests answered, refused (no valid token), bad
    (400/404/405/414) and failed (500)."""

    requests: int
    refused: int
    bad_requests: int
    errors: int


class Dashboard:
    """The dashboard: its token, its HTTP server and what its API answers.

    Args:
        controller: the daemon's controller (its ``status``, ``on_insights``,
            ``on_history`` answers and the ``history`` recorder).
        settings: the ``dashboard`` section of ``daemon.yaml``.
        runtime_dir: where the token file goes (the 0700 runtime directory).
        clock: monotonic seconds (for rate-limiting the refusal log).
    """

    def __init__(self, controller: Any, settings: DashboardSettings, runtime_dir: Path,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.controller = controller
        self.host = settings.host
        self.configured_port = settings.port
        self.configured = settings.enabled
        self.token_file = runtime_dir / TOKEN_FILE
        self.token = secrets.token_urlsafe(32)
        self.port: int | None = None
        self.error: str | None = None
        self._clock = clock
        self._lock = threading.Lock()
        self._counts = {"requests": 0, "refused": 0, "bad_requests": 0, "errors": 0}
        self._last_refusal_log = -math.inf
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._assets = self._load_assets()
        self._log = logger.bind(actor="dashboard")

    @staticmethod
    def _load_assets() -> dict[str, tuple[bytes, str]]:
        """The page's files by URL path (``/`` is ``index.html``); read once.

        A missing assets directory (a broken install) leaves the page out: ``/`` then
        answers 500 saying so."""
        assets: dict[str, tuple[bytes, str]] = {}
        with contextlib.suppress(OSError):
            for path in sorted(ASSETS_DIR.iterdir()):
                kind = _CONTENT_TYPES.get(path.suffix)
                if kind is not None and path.is_file():
                    assets[f"/static/{path.name}"] = (path.read_bytes(), kind)
        index = assets.get("/static/index.html")
        if index is not None:
            assets["/"] = index
        return assets

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._server is not None

    def url(self, with_token: bool = True) -> str | None:
        """The page's address (``None`` while not serving); ``with_token`` adds the
        ``?token=`` that grants access."""
        if self.port is None or self._server is None:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        base = f"http://{host}:{self.port}/"
        return f"{base}?token={self.token}" if with_token else base

    def start(self) -> bool:
        """Write the token file and start serving; True when serving (already or now).

        Failure: never raises. A port in use, an address not of this machine or a token
        file that cannot be written sets :attr:`error` (in ``status``), is logged, and the
        daemon carries on without the page."""
        with self._lock:
            if self._server is not None:
                return True
            try:
                server = self._bind()
            except OSError as exc:
                self.error = (f"cannot serve the dashboard on {self.host}:"
                              f"{self.configured_port}: {exc.strerror or exc}; free the port "
                              "or set dashboard.port in daemon.yaml (0: any free port), then "
                              "run 'modcoord dashboard' again")
                self._log.bind(host=self.host, port=self.configured_port,
                               error=str(exc)).error("dashboard cannot listen")
                return False
            try:
                self._write_token()
            except UnsafePathError as exc:
                server.server_close()
                self.error = (f"cannot write the dashboard's token file: {exc}; check the "
                              "runtime directory, then run 'modcoord dashboard' again")
                self._log.bind(path=str(self.token_file), error=str(exc)).error(
                    "dashboard token not written")
                return False
            self._server = server
            self.port = int(server.server_address[1])
            self.error = None
            self._thread = threading.Thread(target=server.serve_forever,
                                            kwargs={"poll_interval": 0.2},
                                            name="modcoord-dashboard-http", daemon=True)
            self._thread.start()
        self._log.bind(host=self.host, port=self.port, token_file=str(self.token_file)).info(
            "dashboard listening")
        return True

    def _write_token(self) -> None:
        """Raises UnsafePathError: the file cannot be written (the reason in it)."""
        write_file_atomic(self.token_file, (self.token + "\n").encode(), mode=0o600)

    def _bind(self) -> ThreadingHTTPServer:
        owner = self
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET

        class Handler(BaseHTTPRequestHandler):
            server_version = "modcoord-dashboard"
            sys_version = ""

            def do_GET(self) -> None:
                self._answer(owner.handle("GET", self.path, self.headers.get("Cookie", "")))

            def do_HEAD(self) -> None:
                response = owner.handle("GET", self.path, self.headers.get("Cookie", ""))
                self._answer(response, body=False)

            def do_POST(self) -> None:
                self._answer(owner.handle("POST", self.path, self.headers.get("Cookie", "")))

            do_PUT = do_DELETE = do_PATCH = do_POST

            def _answer(self, response: Response, body: bool = True) -> None:
                self.send_response(response.code)
                self.send_header("Content-Type", response.content_type)
                self.send_header("Content-Length", str(len(response.body)))
                for name, value in (*_SECURITY_HEADERS, *response.headers):
                    self.send_header(name, value)
                self.end_headers()
                if body:
                    self.wfile.write(response.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # requests are counted (status dashboard.*), not logged one by one

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True
            allow_reuse_address = True

        return Server((self.host, self.configured_port), Handler)

    def enable(self) -> dict[str, Any]:
        """The ``dashboard`` call: start serving if not yet (again after a failure) and
        answer ``{url, address, started, token_file, error}`` (``url`` carries the
        token; ``error`` is null, else why the page cannot be served and ``url`` null)."""
        was_running = self.running
        self.start()
        return {"url": self.url(), "address": self.url(with_token=False),
                "started": self.running and not was_running,
                "token_file": str(self.token_file), "error": self.error}

    def stop(self) -> None:
        """Stop serving and remove the token file (idempotent)."""
        with self._lock:
            server, self._server = self._server, None
            thread, self._thread = self._thread, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5.0)
        with contextlib.suppress(OSError):
            self.token_file.unlink()

    def statistics(self) -> DashboardStatistics:
        with self._lock:
            return DashboardStatistics(**self._counts)

    def status(self) -> dict[str, Any]:
        """The ``status`` document's ``dashboard`` field (the address without the token)."""
        return {"enabled": self.running, "configured": self.configured, "host": self.host,
                "port": self.port if self.running else self.configured_port,
                "url": self.url(with_token=False), "error": self.error,
                "token_file": str(self.token_file) if self.running else None,
                **asdict(self.statistics())}

    # -- answering ---------------------------------------------------------------------------

    def _count(self, what: str) -> None:
        with self._lock:
            self._counts[what] += 1

    def _authorised(self, query: Mapping[str, list[str]], cookie_header: str
                    ) -> tuple[bool, bool]:
        """``(authorised, set_cookie)``: a valid ``token`` parameter (then the cookie is
        set) or a valid cookie. Compared in constant time."""
        expected = self.token.encode()
        given = query.get("token")
        if given is not None:
            ok = len(given) == 1 and hmac.compare_digest(given[0].encode(), expected)
            return ok, ok
        name = f"{COOKIE_PREFIX}{self.port}="
        for part in cookie_header.split(";"):
            part = part.strip()
            if part.startswith(name) and hmac.compare_digest(
                    part[len(name):].encode(), expected):
                return True, False
        return False, False

    def _refused(self) -> Response:
        self._count("refused")
        now = self._clock()
        if now - self._last_refusal_log >= REFUSAL_LOG_INTERVAL_S:
            self._last_refusal_log = now
            self._log.bind(refused=self._counts["refused"]).warning(
                "dashboard request refused (no valid token)")
        return _FORBIDDEN

    def handle(self, method: str, target: str, cookie_header: str = "") -> Response:
        """Answer one request (``target``: the request line's path and query).

        403 unless the token is valid (before anything else is looked at); then 405 for a
        method other than GET, 404 for an unknown path, 400 for a bad query parameter,
        500 (logged) if producing the answer failed."""
        if len(target) > MAX_REQUEST_TARGET_CHARS:
            self._count("bad_requests")
            return Response(414, b"request target too long\n")
        parts = urlsplit(target)
        try:
            query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False,
                             max_num_fields=64)
        except ValueError:
            return self._refused()
        authorised, set_cookie = self._authorised(query, cookie_header)
        if not authorised:
            return self._refused()
        self._count("requests")
        if method != "GET":
            self._count("bad_requests")
            return Response(405, b"only GET is answered\n", headers=(("Allow", "GET, HEAD"),))
        query.pop("token", None)
        try:
            response = self._route(parts.path, query)
        except Exception as exc:
            self._count("errors")
            self._log.bind(path=parts.path, error=str(exc)).opt(exception=exc).error(
                "dashboard request failed")
            return Response(500, f"the daemon failed to answer: {exc}\n".encode())
        if response.code >= 400:
            self._count("bad_requests")
        if set_cookie:
            cookie = (f"{COOKIE_PREFIX}{self.port}={self.token}; HttpOnly; SameSite=Strict; "
                      "Path=/")
            response = Response(response.code, response.body, response.content_type,
                                (*response.headers, ("Set-Cookie", cookie)))
        return response

    def _route(self, path: str, query: dict[str, list[str]]) -> Response:
        api: dict[str, tuple[Callable[[dict[str, list[str]]], Any], frozenset[str]]] = {
            "/api/layout": (lambda q: layout(), frozenset()),
            "/api/live": (lambda q: self.live(), frozenset()),
            "/api/status": (lambda q: self.controller.status(), frozenset()),
            "/api/insights": (lambda q: self._insights(), frozenset()),
            "/api/history": (self._history, frozenset({"since", "metric", "columns"})),
        }
        if path in api:
            produce, accepted = api[path]
            unknown = sorted(set(query) - accepted)
            if unknown:
                return _bad(f"unknown query parameter(s) {', '.join(unknown)} for {path}; "
                            f"it takes {', '.join(sorted(accepted)) or 'none'} (and token)")
            try:
                return _json(produce(query))
            except _BadQuery as exc:
                return _bad(str(exc))
        if query:
            return _bad(f"unknown query parameter(s) {', '.join(sorted(query))} for {path}; "
                        "it takes none (but token)")
        asset = self._assets.get(path)
        if asset is not None:
            return Response(200, asset[0], asset[1])
        if path == "/":
            return Response(500, f"the dashboard's files are missing from {ASSETS_DIR} "
                                 "(reinstall modcoord)\n".encode())
        return Response(404, f"not found: {path}; the page is at /\n".encode())

    # -- the API's answers -------------------------------------------------------------------

    def _insights(self) -> dict[str, Any]:
        result: dict[str, Any] = self.controller.on_insights(decode_params("insights", {}))
        return result

    def _history(self, query: dict[str, list[str]]) -> dict[str, Any]:
        since = query.get("since", [str(3600)])
        if len(since) != 1:
            raise _BadQuery("since: give it once (seconds back, e.g. since=3600)")
        try:
            since_s = float(since[0])
        except ValueError:
            since_s = math.nan
        if not 0 < since_s <= HISTORY_MAX_SINCE_S:  # NaN fails too
            raise _BadQuery(f"since: {since[0][:40]!r} is not a number of seconds with "
                            f"0 < since <= {HISTORY_MAX_SINCE_S} (30 days); e.g. since=3600")
        columns = query.get("columns", [",".join(HISTORY_COLUMNS)])
        wanted = columns[0].split(",") if len(columns) == 1 else []
        if not wanted or any(c not in HISTORY_COLUMNS for c in wanted) or \
                len(set(wanted)) != len(wanted):
            raise _BadQuery(f"columns: {','.join(columns)[:80]!r} is not a comma-separated "
                            f"list of distinct columns of {','.join(HISTORY_COLUMNS)} (given "
                            "once; e.g. columns=ts,mean)")
        metrics = query.get("metric") or None
        try:
            params = decode_params("history", {"metrics": metrics, "since_s": since_s})
            result: dict[str, Any] = self.controller.on_history(params)
        except InvalidMessageError as exc:
            raise _BadQuery(_without_method(str(exc))) from None
        if wanted != list(result["columns"]):
            pick = itemgetter(*(result["columns"].index(c) for c in wanted))
            single = len(wanted) == 1
            result["columns"] = wanted
            result["series"] = {m: [[pick(p)] for p in points] if single else
                                list(map(pick, points))  # tuples: JSON arrays
                                for m, points in result["series"].items()}
        return result

    def live(self) -> dict[str, Any]:
        """``/api/live``: the ``status`` document, the newest sampled figures (``latest``:
        metric → value, from the last :data:`LIVE_SINCE_S` s of history; empty while the
        history is off) and the module table (the insights: ``/api/insights``)."""
        status = self.controller.status()
        latest: dict[str, float] = {}
        history = self.controller.history
        if history is not None:
            series = history.query(None, LIVE_SINCE_S)["series"]
            latest = {m: points[-1][4] for m, points in series.items() if points}
        return {"status": status, "latest": latest, "modules": self.modules(),
                "now": time.time()}

    def modules(self) -> list[dict[str, Any]]:
        """Each registered module: id, name, modes, subscriptions, publishes per second
        over the last sample (the history's sampler) and seconds since its last
        activity (the memory manager's activity table)."""
        engine = self.controller.coordinator
        infos = engine.modules() if hasattr(engine, "modules") else {}
        activity = getattr(engine, "activity", None)
        clock = getattr(engine, "clock", None)
        now = clock.monotonic() if clock is not None else None
        history = self.controller.history
        rates: Mapping[str, float] = (history.sampler.module_rates_now
                                      if history is not None else {})
        rows = []
        for module_id, info in sorted(infos.items()):
            last = activity.last_seen(module_id) if activity is not None else None
            rows.append({
                "module_id": module_id, "name": info.name,
                "supported_modes": sorted(info.supported_modes),
                "subscribe": list(info.subscribe),
                "updates_per_s": rates.get(module_id),
                "idle_s": None if last is None or now is None else max(0.0, now - last),
            })
        return rows


class _BadQuery(ModcoordError):
    """A query parameter is wrong (answered 400 with this message)."""


_QUERY_NAMES: Final = {"metrics": "metric", "since_s": "since"}
"""The ``history`` call's fields by the query parameter that fills them."""


def _without_method(text: str) -> str:
    """``"history: Expected `str` of length >= 1 - at `$.metrics[0]`"`` → ``"metric:
    Expected `str` of length >= 1"``: the query parameter's name, not the wire's."""
    head, sep, rest = text.partition(": ")
    text = rest if sep and head == "history" else text
    message, at, path = text.partition(" - at `$.")
    if not at:
        return text
    field = path.split("`", 1)[0].split("[", 1)[0]
    return f"{_QUERY_NAMES.get(field, field)}: {message}"
