"""Desired state -> installed stages.

:func:`desired` and :func:`retire` are pure decisions over the accepted manifests and the fleet view (unit
tested without a broker); :class:`Reconciler` carries them out: one cancellable install job per stage (fetch
the shard, load a backend, swap it in), prefetches of the deployment's other shards (so this device can
serve them to peers and adopt them quickly), and retirement of stages nobody wants any more.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from edge_agent.agent.backend import Backend, load_backend
from edge_agent.agent.stages import InstalledStage, StageTable
from edge_agent.cluster.placement import Candidate, choose_adopter
from edge_agent.cluster.view import FleetView, StageKey
from edge_agent.protocol.errors import EdgeAgentError, StoreError
from edge_agent.protocol.manifest import StageSpec
from edge_agent.protocol.messages import Manifest
from edge_agent.transport.blobs import BlobFetcher, TransferCancelled, TransferSpec
from edge_agent.transport.store import BlobStore

log = logging.getLogger("edge_agent.agent")

OLD_VERSION_GRACE_S = 10.0   # an upgraded stage's old version keeps serving in-flight requests this long
ADOPT_AFTER_CONNECT_S = 3.0  # a fresh (re)connection has not seen every retained state yet

ManifestSlot = tuple[str, str]   # (channel, model)


@dataclass
class Desired:
    """What :func:`desired` decided: the stages to hold, the manifest of each, and adoption changes."""

    want: set[StageKey] = field(default_factory=set)
    source: dict[StageKey, Manifest] = field(default_factory=dict)
    adopt: set[StageKey] = field(default_factory=set)     # orphaned stages this device takes on now
    release: set[StageKey] = field(default_factory=set)   # adopted stages whose assigned devices are back


def desired(me: Candidate, manifests: Mapping[ManifestSlot, Manifest], view: FleetView,
            adopted: set[StageKey], may_adopt: bool) -> Desired:
    """Stages ``me`` should hold: those its manifests assign to it, and (stable channel, failover on) those
    with no live holder that the shared adoption rule gives to it. ``may_adopt`` is False until the
    retained states of the fleet have arrived after a (re)connection."""
    out = Desired()
    for (channel, _), m in manifests.items():
        for st in m.stages:
            key = (m.name, m.version, st.index)
            out.source[key] = m
            devs = st.replicas
            if me.device_id in devs:
                out.want.add(key)
                continue
            if channel != "stable" or not m.failover:
                continue
            if m.standby is not None and me.device_id not in m.standby:
                continue   # the signed manifest does not name this device as a standby: never adopt
            if key in adopted:
                if any(view.online(d) and (view.report(d, key) or {}).get("status") == "ready" for d in devs):
                    out.release.add(key)
                else:
                    out.want.add(key)
                continue
            holders = set(devs) | set(view.live_holders(key))
            holders.discard(me.device_id)
            if any(view.online(d) for d in holders) or not may_adopt:
                continue
            if choose_adopter(view, key, me, m.standby) == me.device_id:
                out.adopt.add(key)
                out.want.add(key)
    return out


def retire(installed: Mapping[StageKey, object], status: Mapping[StageKey, dict], want: set[StageKey],
           source: Mapping[StageKey, Manifest], view: FleetView, undesired_since: dict[StageKey, float],
           now: float, grace_s: float = OLD_VERSION_GRACE_S) -> list[tuple[StageKey, str]]:
    """Installed stages to stop serving, with the reason: at once when the model is gone from this device,
    after ``grace_s`` when a newer version (or the assigned device, for an adopted stage) is ready, so
    requests already routed here still complete. Updates ``undesired_since``."""
    out = []
    for key in installed:
        if key in want:
            undesired_since.pop(key, None)
            continue
        replaced = any(k[0] == key[0] and k[2] == key[2] and k[1] > key[1]
                       and status.get(k, {}).get("status") == "ready" for k in installed)
        # a stage handed back (adoption dropped) keeps serving a while: routers may still send here
        replaced = replaced or (key in source and bool(view.ready_holders(key)))
        first = undesired_since.setdefault(key, now)
        if not replaced or now - first >= grace_s:
            out.append((key, "replaced" if replaced else "no longer deployed here"))
    return out


@dataclass
class _Job:
    thread: threading.Thread
    cancel: threading.Event


class Reconciler:
    """Carries out :func:`desired` / :func:`retire` for one device (runs on the agent's control thread)."""

    def __init__(self, device_id: str, table: StageTable, view: FleetView, store: BlobStore,
                 fetcher: BlobFetcher, counters: collections.Counter, *, threads: int, backend: str,
                 wrap_backend: Callable[[Backend], Backend] | None, fetch_timeout_s: float,
                 gflops: Callable[[], float], on_change: Callable[[bool], None], on_ready: Callable[[], None],
                 kick: threading.Event) -> None:
        self.device_id = device_id
        self.table = table
        self.view = view
        self.store = store
        self.fetcher = fetcher
        self.counters = counters
        self.threads = threads
        self.backend = backend
        self.wrap_backend = wrap_backend
        self.fetch_timeout_s = fetch_timeout_s
        self.gflops = gflops            # the device's current GFLOP/s (adoption rule)
        self.on_change = on_change      # publish the device state (force?)
        self.on_ready = on_ready        # a stage became ready: publish load at once
        self.kick = kick
        self.manifests: dict[ManifestSlot, Manifest] = {}
        # (model, version) -> manifest, rebuilt (never mutated) when a manifest changes: every request looks
        # its manifest up here, without the table lock
        self._by_version: dict[tuple[str, int], Manifest] = {}
        self.adopted: set[StageKey] = set()
        self.connected_at = float("inf")
        self._jobs: dict[StageKey, _Job] = {}
        self._undesired_since: dict[StageKey, float] = {}
        self._prefetching: set[str] = set()
        self._last_signature = ""

    def set_manifest(self, slot: ManifestSlot, m: Manifest | None) -> None:
        """An accepted manifest (None or a tombstone: the model is undeployed on that channel)."""
        with self.table.lock:
            if m is not None and m.stages:
                self.manifests[slot] = m
            else:
                self.manifests.pop(slot, None)
            by_version: dict[tuple[str, int], Manifest] = {}
            for (_, name), mm in self.manifests.items():
                by_version.setdefault((name, mm.version), mm)   # the first slot wins, as a scan would find
            self._by_version = by_version

    def manifest_of(self, model: str, version: int) -> Manifest | None:
        """The accepted manifest (any channel) of ``model`` at ``version``."""
        return self._by_version.get((model, version))

    def cancel_all(self) -> None:
        with self.table.lock:
            for job in self._jobs.values():
                job.cancel.set()

    def reconcile(self) -> None:
        me = Candidate(self.device_id, len(self.table.status), self.gflops())
        with self.table.lock:
            may_adopt = time.monotonic() - self.connected_at >= ADOPT_AFTER_CONNECT_S
            d = desired(me, self.manifests, self.view, self.adopted, may_adopt)
            for key in d.release:
                log.info("%s v%d stage %d is back on its assigned device; dropping adoption", *key)
                self.adopted.discard(key)
            for key in d.adopt:
                log.warning("no live device holds %s v%d stage %d; adopting it", *key)
                self.adopted.add(key)
                self.counters["adoptions"] += 1
            for key in d.want:                            # start what is missing
                if key in self.table.installed or key in self._jobs:
                    continue
                cancel = threading.Event()
                th = threading.Thread(target=self._install_job, args=(d.source[key], key, cancel),
                                      name=f"install-{key[0]}-v{key[1]}-s{key[2]}", daemon=True)
                self._jobs[key] = _Job(th, cancel)
                th.start()
            for key, job in list(self._jobs.items()):     # cancel transfers nobody wants any more
                if key not in d.want:
                    job.cancel.set()
            for key, reason in retire(self.table.installed, self.table.status, d.want, d.source, self.view,
                                      self._undesired_since, time.monotonic()):
                self._uninstall(key, reason)
            for key in list(self.table.status):
                if key not in d.want and key not in self.table.installed and key not in self._jobs:
                    self.table.status.pop(key, None)
            # keep a copy of every shard of the deployments this device takes part in (failover source)
            involved = {id(d.source[k]): d.source[k] for k in d.want if k in d.source}
            signature = repr(sorted(self.table.status.items()))
        for m in involved.values():
            for st in m.stages:
                if (m.name, m.version, st.index) not in d.want:   # own stages: the install job fetches
                    self._prefetch(m, st)
        if signature != self._last_signature:
            self._last_signature = signature
            self.on_change(True)

    # ---------------------------------------------------------------------------------- jobs
    def _set_status(self, key: StageKey, force: bool = True, **fields: object) -> None:
        self.table.update_status(key, **fields)
        self.on_change(force)

    def _prefetch(self, m: Manifest, st: StageSpec) -> None:
        sha = st.shard_sha256
        with self.table.lock:
            if sha in self._prefetching or self.store.has(sha):
                return
            self._prefetching.add(sha)

        def job() -> None:
            try:
                self.fetcher.fetch(_transfer(st), self.sources_for(m, sha), timeout=self.fetch_timeout_s,
                                   more_sources=lambda: self.sources_for(m, sha))
                self.on_change(False)
            except StoreError as exc:
                log.info("prefetch of %s stage %s shard skipped: %s", m.name, st.index, exc)
            finally:
                with self.table.lock:
                    self._prefetching.discard(sha)

        threading.Thread(target=job, name=f"prefetch-{sha[:8]}", daemon=True).start()

    def _install_job(self, m: Manifest, key: StageKey, cancel: threading.Event) -> None:
        try:
            self._install(m, key, cancel)
        except Exception:
            log.exception("installing %s v%d stage %d failed", *key)
        finally:
            with self.table.lock:
                self._jobs.pop(key, None)
            self.kick.set()

    def _install(self, m: Manifest, key: StageKey, cancel: threading.Event) -> None:
        st = m.stages[key[2]]
        role = "assigned" if self.device_id in st.replicas else "adopted"
        base = {"n_stages": len(m.stages), "error": "", "role": role, "channel": m.channel}
        try:
            sha = st.shard_sha256
            if not self.store.has(sha):
                self._set_status(key, status="fetching", progress=0.0, **base)

                def progress(have: int, total: int) -> None:
                    self._set_status(key, force=have == total, progress=round(have / max(total, 1), 3))

                self.fetcher.fetch(_transfer(st), self.sources_for(m, sha), timeout=self.fetch_timeout_s,
                                   progress=progress, cancel=cancel, more_sources=lambda: self.sources_for(m, sha))
            if cancel.is_set():
                raise TransferCancelled("superseded")
            self._set_status(key, status="loading", progress=1.0, **base)
            try:
                data = self.store.get(sha)     # re-verified by hash: a shard changed on disk is never loaded
            except StoreError as exc:
                log.warning("%s; fetching it again", exc)
                self.counters["corrupt_shard_on_disk"] += 1
                self.fetcher.fetch(_transfer(st), self.sources_for(m, sha), timeout=self.fetch_timeout_s,
                                   cancel=cancel, more_sources=lambda: self.sources_for(m, sha))
                data = self.store.get(sha)
            backend = load_backend(data, threads=self.threads, prefer=self.backend)
            if self.wrap_backend is not None:
                backend = self.wrap_backend(backend)
            check_stage_io(backend, st)
        except TransferCancelled:
            log.info("install of %s v%d stage %d cancelled: no longer wanted", *key)
            with self.table.lock:
                self.table.status.pop(key, None)
            return
        except (StoreError, EdgeAgentError, ValueError, RuntimeError, KeyError, TypeError) as exc:
            self._install_failed(key, base, str(exc))
            return
        except Exception as exc:  # ORT and onnx raise their own exception types for bad models
            self._install_failed(key, base, f"cannot load shard: {exc}")
            return
        inst = InstalledStage(m, st, backend)
        with self.table.lock:
            if cancel.is_set():
                self.table.status.pop(key, None)
                return
            self.table.installed[key] = inst
        log.info("serving %s v%d stage %d/%d on %s as %s (%s: %s)", m.name, m.version, inst.index + 1,
                 len(m.stages), self.device_id, role, backend.name, backend.reason)
        self._set_status(key, status="ready", progress=1.0, **base)
        self.on_ready()

    def _install_failed(self, key: StageKey, base: dict, why: str) -> None:
        log.error("deployment %s v%d stage %d failed: %s", *key, why)
        self.counters["deploy_failed"] += 1
        self._set_status(key, status="error", **{**base, "error": why})

    def sources_for(self, m: Manifest, sha: str) -> list[str]:
        """Where to fetch a shard: live peers that report holding it first, then the manifest's sources."""
        peers = [s.endpoint for s in self.view.states() if s.online and s.endpoint and sha in s.blobs]
        random.shuffle(peers)  # spread the load of a fleet-wide deploy over the holders
        return peers + [s for s in m.sources if s not in peers]

    def _uninstall(self, key: StageKey, reason: str) -> None:
        with self.table.lock:
            had = self.table.drop(key)
            self._undesired_since.pop(key, None)
            self.adopted.discard(key)
        if had is not None:
            log.info("stopped serving %s v%d stage %d (%s)", *key, reason)


def _transfer(st: StageSpec) -> TransferSpec:
    return TransferSpec(st.shard_sha256, st.shard_size, st.chunk_size, list(st.chunk_sha256))


def check_stage_io(backend: Backend, st: StageSpec) -> None:
    """The shard's inputs/outputs must be what the manifest says, or the pipeline would break later."""
    have_in = {s.name for s in backend.inputs}
    have_out = {s.name for s in backend.outputs}
    if set(st.inputs) != have_in:
        raise ValueError(f"shard inputs {sorted(have_in)} differ from the manifest's {sorted(st.inputs)}")
    if not set(st.outputs) <= have_out:
        raise ValueError(f"shard outputs {sorted(have_out)} lack the manifest's {sorted(st.outputs)}")
