"""``edge-agent sim``: a simulated fleet of profiled devices (``--devices rpi4:3,gateway:1`` or a fleet file)
that runs until Ctrl-C, optionally with a model deployed on it. The CLI parses and renders; this module
starts, waits and holds."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

from edge_agent.protocol.errors import EdgeAgentError


def wait_measured(fleet: Any, names: list[str], timeout: float = 60.0) -> list[Any]:
    """The devices ``names`` once each is online and has measured its link (DeviceStatus list, by name).
    Raises EdgeAgentError naming the devices still missing."""
    end = time.monotonic() + timeout
    while True:
        devs = {d.device_id: d for d in fleet.devices()}
        missing = [n for n in names if n not in devs or devs[n].link_rtt_ms is None]
        if not missing:
            return [devs[n] for n in names]
        if time.monotonic() > end:
            raise EdgeAgentError(f"simulated devices not up (online with a measured link) within {timeout:.0f} s: "
                                 f"{', '.join(missing)}")
        time.sleep(0.2)


def load_model_arg(model: str) -> tuple[Any, str]:
    """``--model``: an ONNX file, or a zoo model built in code; (model, deployment name)."""
    path = Path(model)
    if path.is_file():
        return str(path), path.stem.replace(".", "-")
    from models import zoo
    return zoo.build(model, seed=0), model


def hold() -> None:
    """Block until Ctrl-C (KeyboardInterrupt, as usual) or SIGTERM (returns)."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    finally:
        signal.signal(signal.SIGTERM, previous)
