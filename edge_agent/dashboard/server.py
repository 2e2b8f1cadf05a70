"""``edge-agent dashboard``: the web page of a fleet, served from the operator's own process (aiohttp).

One sampler builds a snapshot a second (:mod:`.snapshot`), appends it to the chart history (:mod:`.history`)
and pushes it to every open page over server-sent events; ``/metrics`` serves the fleet view in Prometheus
format (:mod:`edge_agent.operator.metrics`). Every asset ships in the wheel: the page's own files under
``static/``, the chart library from the installed ``plotly`` package (``plotly/package_data/plotly.min.js``).

Security model (docs/dashboard.md):

- binds loopback unless told otherwise, and on loopback refuses requests whose ``Host`` header is not a
  loopback name (a web page elsewhere cannot reach it through DNS rebinding);
- read-only unless write actions are enabled (the CLI enables them only with the fleet signing key); then
  undeploy and rollback need the per-process token printed at start (in the URL fragment, which browsers
  never send to servers or put in logs), sent back in a custom header: a page of another origin can neither
  read the token nor send that header without a CORS preflight, which this server never grants.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import socket
import threading
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.dashboard.history import History
from edge_agent.dashboard.snapshot import build_snapshot, gather

if TYPE_CHECKING:
    from aiohttp import web

    from edge_agent.operator.fleet import Fleet

log = logging.getLogger("edge_agent.dashboard")

STATIC = Path(__file__).with_name("static")
TOKEN_HEADER = "X-Dashboard-Token"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]", "::1")
ACTIONS = ("undeploy", "rollback")


class DashboardUnavailable(RuntimeError):
    """The dashboard's libraries (the ``dashboard`` extra) are not installed."""


def _require_libs() -> Path:
    """aiohttp importable and plotly.min.js present; returns the path of plotly.min.js."""
    try:
        import aiohttp  # noqa: F401
        js = resources.files("plotly") / "package_data" / "plotly.min.js"
    except ModuleNotFoundError as exc:
        raise DashboardUnavailable(f"the dashboard needs {exc.name}: pip install 'edge-agent[dashboard]'") from None
    path = Path(str(js))
    if not path.is_file():
        raise DashboardUnavailable(f"the installed plotly package has no {path} (plotly>=5 ships it)")
    return path


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_NAMES or host.startswith("127.")


class Dashboard:
    """The dashboard of ``fleet`` on ``host:port`` (port 0: any free port), served from a thread of its own.

    ``write``: enable undeploy/rollback (with the token in :attr:`url`). ``interval``: seconds between
    snapshots. ``actions`` maps an action name to ``(fleet, deployment name) -> message`` (tests, other
    front-ends); the default calls ``Fleet.undeploy`` / ``Fleet.rollback``.
    """

    def __init__(self, fleet: Fleet, host: str = "127.0.0.1", port: int = 8700, *, write: bool = False,
                 interval: float = 1.0, history_points: int = 300,
                 actions: dict[str, Callable[[Any, str], str]] | None = None) -> None:
        self.plotly_js = _require_libs()
        from edge_agent.operator.metrics import fleet_registry

        self.fleet = fleet
        self.host = host
        self.port = port
        self.write = write
        self.interval = interval
        self.token = secrets.token_urlsafe(24) if write else ""
        self.history = History(history_points)
        self.registry = fleet_registry(fleet)
        self.actions = actions or {"undeploy": _undeploy, "rollback": _rollback}
        self.latest = b""                  # the last snapshot, JSON
        self._seq = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._tick: asyncio.Condition | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping = False
        self._error: BaseException | None = None
        self._action_lock = threading.Lock()

    # ------------------------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '[::]') else host}:{self.port}/"
        return f"{base}#token={self.token}" if self.write else base

    def start(self, timeout: float = 15.0) -> Dashboard:
        self._thread = threading.Thread(target=self._run, name="dashboard", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"dashboard did not start on {self.host}:{self.port} within {timeout:.0f} s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self._stopping = True
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        try:
            fut.result(10)
        except Exception:  # already stopped or the loop died: the thread ends anyway
            log.debug("dashboard shutdown", exc_info=True)
        self._thread.join(10)

    def __enter__(self) -> Dashboard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # report a bind error to start() instead of dying silently
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        from aiohttp import web

        self._tick = asyncio.Condition()
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/vendor/plotly.min.js", self._plotly)
        app.router.add_get("/api/snapshot", self._snapshot)
        app.router.add_get("/api/events", self._events)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/api/deployments/{name}/{action}", self._action)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        # bind the socket here so port 0 (any free port) tells us which port it got
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        await self._sample_once()
        self._ready.set()
        while not self._stopping:
            await asyncio.sleep(self.interval)
            if not self._stopping:
                await self._sample_once()

    async def _shutdown(self) -> None:
        self._stopping = True
        if self._tick is not None:
            async with self._tick:
                self._tick.notify_all()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _sample_once(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            # gathering takes the fleet's locks: do it off the event loop
            data = await loop.run_in_executor(None, gather, self.fleet, 10.0, self.write)
            snap = build_snapshot(data)
            self.history.add(snap)
            snap["series"] = self.history.export()
            self.latest = json.dumps(snap, allow_nan=False, default=str).encode()
        except Exception:   # one bad snapshot must not stop the page: keep the previous one
            log.exception("dashboard snapshot failed")
            return
        self._seq += 1
        assert self._tick is not None
        async with self._tick:
            self._tick.notify_all()

    # ------------------------------------------------------------------------------- handlers
    @staticmethod
    def _json(obj: Any, status: int = 200) -> web.Response:
        from aiohttp import web
        return web.json_response(obj, status=status)

    @property
    def _guard(self) -> Any:
        from aiohttp import web

        @web.middleware
        async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
            # DNS rebinding: on loopback only loopback host names are served
            if is_loopback(self.host) and not is_loopback(request.url.host or ""):
                return web.Response(status=403, text=f"host {request.host!r} not served (loopback only)")
            resp = await handler(request)
            resp.headers.setdefault("Cache-Control", "no-store")
            resp.headers.setdefault("X-Content-Type-Options", "nosniff")
            resp.headers.setdefault("X-Frame-Options", "DENY")
            return resp
        return guard

    async def _index(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web
        resp = web.FileResponse(STATIC / "index.html")
        resp.headers["Content-Security-Policy"] = ("default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                                   "img-src 'self' data:; connect-src 'self'")
        return resp

    async def _static(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web
        name = request.match_info["name"]
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    async def _plotly(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web
        return web.FileResponse(self.plotly_js, headers={"Cache-Control": "max-age=3600"})

    async def _snapshot(self, request: web.Request) -> web.Response:
        from aiohttp import web
        return web.Response(body=self.latest, content_type="application/json")

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: the current snapshot at once, then each new one."""
        from aiohttp import web
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        seen = -1
        assert self._tick is not None
        try:
            while not self._stopping:
                if seen == self._seq:
                    async with self._tick:
                        try:
                            await asyncio.wait_for(self._tick.wait(), 15.0)
                        except asyncio.TimeoutError:
                            await resp.write(b": keep-alive\n\n")
                            continue
                    continue
                seen = self._seq
                await resp.write(b"event: snapshot\ndata: " + self.latest + b"\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp

    async def _metrics(self, request: web.Request) -> web.Response:
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        body = await asyncio.get_running_loop().run_in_executor(None, generate_latest, self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _action(self, request: web.Request) -> web.Response:
        name, action = request.match_info["name"], request.match_info["action"]
        if not self.write:
            return self._json({"ok": False, "error": "read-only dashboard (start it with --key to enable "
                                                     "actions)"}, 403)
        if not hmac.compare_digest(request.headers.get(TOKEN_HEADER, ""), self.token):
            return self._json({"ok": False, "error": "missing or wrong dashboard token"}, 403)
        if action not in ACTIONS or action not in self.actions:
            return self._json({"ok": False, "error": f"unknown action {action!r} (known: {', '.join(ACTIONS)})"},
                              404)
        if not self._action_lock.acquire(blocking=False):
            return self._json({"ok": False, "error": "another action is still running"}, 409)
        try:
            log.warning("dashboard action: %s %s", action, name)
            msg = await asyncio.get_running_loop().run_in_executor(None, self.actions[action], self.fleet, name)
        except Exception as exc:
            return self._json({"ok": False, "error": f"{action} {name}: {exc}"}, 400)
        finally:
            self._action_lock.release()
        return self._json({"ok": True, "message": msg})


def _undeploy(fleet: Any, name: str) -> str:
    fleet.undeploy(name)
    return f"{name} undeployed"


def _rollback(fleet: Any, name: str) -> str:
    dep = fleet.rollback(name)
    return f"{name} rolled back: now v{dep.version}"
