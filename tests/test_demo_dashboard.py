"""``DEMO_DASHBOARD=1 make demo`` as a user runs it: the demo (embedded broker, three agent processes, answers
checked against ONNX Runtime) prints the dashboard URL, serves it with requests flowing, and stops cleanly on
Ctrl-C (SIGINT)."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request

from .conftest import wait_until


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_with_dashboard_prints_the_url_serves_live_data_and_stops_on_ctrl_c() -> None:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "demo", "--dashboard", "--dashboard-port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        url = wait_until(lambda: next((m.group(1) for ln in lines if (m := re.search(r"dashboard: (http\S+)", ln))),
                                      None), 240, what="the demo to print its dashboard URL")
        assert url.startswith(f"http://127.0.0.1:{port}/")

        def snapshot() -> dict:
            with urllib.request.urlopen(url.split("#")[0] + "api/snapshot", timeout=10) as r:
                return json.loads(r.read())

        first = snapshot()
        assert len(first["devices"]) >= 3 and first["deployments"]
        served = lambda s: sum(d.get("served") or 0 for d in s["devices"])   # noqa: E731
        wait_until(lambda: served(snapshot()) > served(first), 20, what="requests flowing while it serves")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 0, "".join(lines[-30:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
