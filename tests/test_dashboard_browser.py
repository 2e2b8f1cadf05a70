"""The dashboard as a person uses it: a simulated fleet (real Mosquitto, real agent processes), a model deployed
and requests flowing, the page opened in headless Chromium (Debian's ``chromium`` driven through its
``chromedriver``; Selenium downloads nothing). Checks what the page shows and that it moves, scrapes
``/metrics`` with the official parser, tries the write actions, and saves ``docs/dashboard.png``."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.dashboard.server import TOKEN_HEADER, Dashboard
from edge_agent.lab.sim import SimFleet
from edge_agent.operator.fleet import Fleet
from edge_agent.protocol.streams import hosted_source
from models import zoo

from .conftest import wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "dashboard.png"


@pytest.fixture(scope="module")
def browser():  # noqa: ANN201 - a selenium WebDriver
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("chromium and chromium-driver are not installed: run .ci/run or "
                    "`apt-get install chromium chromium-driver`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1440,1000", "--hide-scrollbars", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # an explicit driver path: Selenium Manager (which would download a browser) is never run
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _get(url: str, headers: dict | None = None, method: str = "GET") -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _texts(driver, css: str) -> list[str]:  # noqa: ANN001
    """Rendered text of the elements matching ``css``, read in one go (the page re-renders twice a second)."""
    return driver.execute_script("return [...document.querySelectorAll(arguments[0])]"
                                 ".map(e => (e.innerText ?? e.textContent ?? '').trim())", css)


def _attrs(driver, css: str, attr: str) -> list[str]:  # noqa: ANN001
    return driver.execute_script("return [...document.querySelectorAll(arguments[0])].map(e => e.getAttribute("
                                 "arguments[1]))", css, attr)


def test_dashboard_in_a_real_browser_shows_the_fleet_live(browser, tmp_path) -> None:
    cnn, mlp = zoo.build("mobilenetv2", seed=0), zoo.build("mlp", seed=1)
    x_cnn, x_mlp = zoo.sample_inputs(cnn), zoo.sample_inputs(mlp)
    with SimFleet(3, broker_kind="mosquitto", workdir=tmp_path) as sim, Fleet(sim.broker.url) as fleet:
        # a camera: a device hosting a synthetic source at 4 fps (what `edge-agent run --source` does)
        sim.add_device("cam-0", gflops=1.0, extra_args=["--source", "door=synthetic:fps=4,seed=5"])
        fleet.wait_for_devices(4, timeout=60)
        wait_until(lambda: all(d.link_rtt_ms is not None for d in fleet.devices()), 30, what="links measured")
        fleet.deploy(cnn, "mobilenetv2", stages=3, devices=["dev-0", "dev-1", "dev-2"], timeout=120)
        fleet.deploy(mlp, "mlp", stages=1, replicas=2, devices=["dev-0", "dev-1"], timeout=120)
        fleet.stream_start("door", "mobilenetv2", hosted_source(fleet.fleet, "cam-0", "door"), "results/door",
                           policy="latest", timeout=60)
        for _ in range(3):
            fleet.infer("mobilenetv2", x_cnn)

        stop = threading.Event()

        def load() -> None:   # what an application would do: requests keep coming
            while not stop.is_set():
                futs = [fleet.submit("mobilenetv2", x_cnn, timeout=30) for _ in range(4)]
                futs.append(fleet.submit("mlp", x_mlp, timeout=30))
                for f in futs:
                    f.result(40)
                stop.wait(0.05)

        worker = threading.Thread(target=load, daemon=True)
        worker.start()
        try:
            with Dashboard(fleet, "127.0.0.1", 0, interval=0.5) as dash:
                _check_page(browser, dash, fleet)
                _check_metrics(dash)
                _check_read_only(dash)
        finally:
            stop.set()
            worker.join(60)

        # write actions: only with the per-process token
        with Dashboard(fleet, "127.0.0.1", 0, write=True) as dash:
            base = dash.url.split("#")[0]
            assert dash.token and dash.url.endswith(f"#token={dash.token}")
            code, _ = _get(f"{base}api/deployments/mlp/undeploy", {TOKEN_HEADER: "guess"}, "POST")
            assert code == 403 and fleet.current("mlp") is not None
            code, body = _get(f"{base}api/deployments/mlp/undeploy", {TOKEN_HEADER: dash.token}, "POST")
            assert code == 200 and json.loads(body)["ok"] is True
            assert fleet.current("mlp") is None
            assert not any(e["model"] == "mlp" for d in fleet.devices() for e in d.stages)


def _check_page(driver, dash: Dashboard, fleet: Fleet) -> None:  # noqa: ANN001
    driver.get(dash.url)
    wait_until(lambda: len(_texts(driver, "#devices tbody tr[data-device]")) == 4, 30, what="four devices in the page")
    names = sorted(d.device_id for d in fleet.devices())
    assert sorted(_attrs(driver, "#devices tbody tr[data-device]", "data-device")) == names
    wait_until(lambda: _texts(driver, "#live-text") == ["live"], 10, what="the live indicator")
    for d in fleet.devices():
        cells = _texts(driver, f'#devices tr[data-device="{d.device_id}"] td')
        assert cells[1] == "online" and cells[3] == d.isa, cells
        assert float(cells[5].replace(",", "")) == pytest.approx(d.gflops, abs=0.06), cells   # measured GFLOP/s

    # the pipeline picture: three stages, each naming the device the manifest put it on, all ready
    m = fleet.current("mobilenetv2")
    dep = '.deployment[data-name="mobilenetv2"]'
    wait_until(lambda: len(_texts(driver, f"{dep} .pipeline .stage")) == 3, 10, what="three stage boxes")
    assert _attrs(driver, f"{dep} .pipeline .stage", "data-stage") == ["0", "1", "2"]
    for st, text in zip(m.stages, _texts(driver, f"{dep} .pipeline .stage")):
        assert st.replicas[0] in text, text
    assert len(_texts(driver, f"{dep} .pipeline svg.arrow")) == 4                  # in -> 3 stages -> out
    wait_until(lambda: "all stages ready" in _texts(driver, f"{dep} .dep-head")[0], 10,
               what="the deployment converged")
    (mlp_box,) = _texts(driver, '.deployment[data-name="mlp"] .pipeline .stage')
    assert sum(d in mlp_box for d in names) == 2                                         # two replicas

    # numbers that move: served counts grow, the chart gains points, throughput is measured
    def served() -> int:
        return sum(int(t.replace(",", "") or 0) for t in _texts(driver, "#devices td.served") if t != "–")

    first = served()
    wait_until(lambda: served() > first, 15, what="served counts growing in the page")
    wait_until(lambda: _texts(driver, "#s-throughput") and not _texts(driver, "#s-throughput")[0].startswith(("0 ", "–")),
               15, what="a fleet throughput above zero")

    def points() -> int:
        return driver.execute_script(
            "const c = document.querySelector('.deployment[data-name=\"mobilenetv2\"] .chart.throughput');"
            "return c && c.data ? c.data[0].x.length : 0;")

    n = points()
    wait_until(lambda: points() > max(n, 3), 15, what="the throughput chart gaining points")
    wait_until(lambda: _texts(driver, f"{dep} .dep-figures")[0].count("–") == 0, 15,
               what="latency percentiles of the deployment")
    assert "read-only" in _texts(driver, "#access")[0]
    assert _texts(driver, "button[data-action]") == []                                # no write buttons
    # the camera's stream: its row names the ingress device, and frames keep coming out (fps out > 0)
    row = 'tr[data-stream="door"] td'
    wait_until(lambda: len(_texts(driver, row)) > 6 and _texts(driver, row)[4] in m.stages[0].replicas, 20,
               what="the stream row with its ingress device")
    wait_until(lambda: float((_texts(driver, row)[6] or "0").replace("–", "0") or 0) > 0, 20,
               what="the stream's fps out above zero")
    severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert severe == [], severe

    # a screenshot of the whole page for the README, once the charts hold some history
    wait_until(lambda: points() >= 16, 15, what="eight seconds of chart history")
    height, chrome = driver.execute_script("return [document.documentElement.scrollHeight, "
                                           "window.outerHeight - window.innerHeight]")
    driver.set_window_size(1440, min(int(height) + int(chrome), 2600))
    wait_until(lambda: points() > 0, 5, what="charts drawn after the resize")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    assert driver.save_screenshot(str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 20_000


def _check_metrics(dash: Dashboard) -> None:
    code, body = _get(dash.url + "metrics")
    assert code == 200
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    online = {s.labels["state"]: s.value for s in fams["edge_agent_fleet_devices"].samples}
    assert online == {"online": 4.0, "offline": 0.0}
    served = [s for s in fams["edge_agent_fleet_stage_served"].samples
              if s.labels["model"] == "mobilenetv2" and s.name.endswith("_total")]
    assert sorted(s.labels["stage"] for s in served) == ["0", "1", "2"] and all(s.value > 0 for s in served)
    reqs = {s.labels["model"]: s.value for s in fams["edge_agent_fleet_client_requests"].samples
            if s.name.endswith("_total")}
    assert reqs["mobilenetv2"] >= 3
    ready = [s for s in fams["edge_agent_fleet_stage_replicas"].samples if s.labels["model"] == "mlp"]
    assert [(s.labels["status"], s.value) for s in ready] == [("ready", 2.0)]


def _check_read_only(dash: Dashboard) -> None:
    code, body = _get(f"{dash.url}api/deployments/mobilenetv2/undeploy", {TOKEN_HEADER: "x"}, "POST")
    assert code == 403 and b"read-only" in body
    # DNS rebinding: a loopback dashboard serves loopback host names only
    code, _ = _get(dash.url, {"Host": "attacker.example:80"})
    assert code == 403

