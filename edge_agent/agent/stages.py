"""The stages a device holds: installed backends and the status it reports for each (one lock for both)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from edge_agent.agent.backend import Backend
from edge_agent.cluster.view import StageKey
from edge_agent.protocol.manifest import StageSpec
from edge_agent.protocol.messages import Manifest


@dataclass
class InstalledStage:
    """A stage loaded and ready to serve."""

    manifest: Manifest
    stage: StageSpec
    backend: Backend
    loaded_at: float = field(default_factory=time.time)

    @property
    def index(self) -> int:
        return self.stage.index

    @property
    def key(self) -> StageKey:
        return (self.manifest.name, self.manifest.version, self.index)

    @property
    def last(self) -> bool:
        return self.index == len(self.manifest.stages) - 1

    @cached_property
    def input_checks(self) -> tuple[tuple[str, np.dtype, int, tuple[tuple[int, int], ...]], ...]:
        """What every request's inputs are checked against, worked out once per installed stage: (name, dtype,
        rank, fixed (axis, size) pairs) of each backend input (see ``server._inputs_match``)."""
        return tuple((s.name, np.dtype(s.dtype), len(s.shape), tuple(s.fixed_dims())) for s in self.backend.inputs)


class StageTable:
    """Installed stages and per-stage status (fetching, loading, ready, error + progress, role, channel)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.installed: dict[StageKey, InstalledStage] = {}
        self.status: dict[StageKey, dict] = {}

    def get(self, key: StageKey) -> InstalledStage | None:
        with self.lock:
            return self.installed.get(key)

    def update_status(self, key: StageKey, **fields: object) -> None:
        with self.lock:
            self.status.setdefault(key, {}).update(fields)

    def drop(self, key: StageKey) -> InstalledStage | None:
        """Forget a stage entirely; returns what was installed."""
        with self.lock:
            self.status.pop(key, None)
            return self.installed.pop(key, None)

    def report(self) -> list[dict]:
        """Stage entries of the device state, sorted by key."""
        with self.lock:
            out = []
            for key, st in sorted(self.status.items()):
                model, version, index = key
                entry = {"model": model, "version": version, "stage": index, **st}
                inst = self.installed.get(key)
                if inst is not None:
                    entry.update(backend=inst.backend.name, backend_reason=inst.backend.reason,
                                 n_stages=len(inst.manifest.stages))
                out.append(entry)
            return out

    def served(self, model: str | None = None, version: int | None = None) -> list[StageKey]:
        """Installed keys, optionally of one model (and version)."""
        with self.lock:
            return sorted(k for k in self.installed if (model is None or k[0] == model)
                          and (version is None or k[1] == version))
