"""Discovery: advertise this device and browse for peers over mDNS/DNS-SD (python-zeroconf).

One :class:`Discovery` per process owns one zeroconf instance bound to explicit IPv4
interfaces. It registers ``<device_id>._edge-agent._tcp.local.`` and/or browses that type
into a :class:`PeerTable`.

Why the questions are all QM (multicast-response): several agents on one machine share UDP
port 5353 through SO_REUSEPORT. Multicast reaches every one of those sockets, but a unicast
reply (what a QU question asks for) is delivered by the kernel to just one of them, chosen by
hash, often in the wrong process. Browsing, resolving and the duplicate-id check therefore
ask for multicast answers, which every process on the host (and on the link) sees.

Threads: zeroconf runs its own event loop thread; service resolution runs as tasks on that
loop (never blocking it); table changes and user callbacks run on one dispatch thread per
Discovery, in the order the events happened.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import socket
import threading
import time
from collections.abc import Sequence
from types import TracebackType

from zeroconf import (
    DNSQuestionType,
    IPVersion,
    NonUniqueNameException,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo

from .interfaces import resolve_interfaces
from .peers import Peer, PeerCallback, PeerTable
from .txt import DeviceInfo

log = logging.getLogger("discovery")

SERVICE_TYPE = "_edge-agent._tcp.local."

# Host and service records share this TTL (seconds). A device that dies without a goodbye
# lingers in peers' caches this long; zeroconf's 4500 s default for PTR/TXT is far too long
# for a fleet where MQTT presence is the real liveness signal anyway.
DEFAULT_TTL = 120


class DuplicateDeviceError(RuntimeError):
    """Another live process already advertises this device id."""

    def __init__(self, device_id: str, service_name: str, detail: str = "") -> None:
        self.device_id = device_id
        self.service_name = service_name
        message = (
            f"device id {device_id!r} is already advertised on the network ({service_name}); "
            "every device needs a unique id (was a disk image copied with its config?)"
        )
        super().__init__(message + (f": {detail}" if detail else ""))


def service_name_for(device_id: str) -> str:
    """The DNS-SD service instance name used for ``device_id``."""
    return f"{device_id}.{SERVICE_TYPE}"


def _new_zeroconf(addresses: list[str]) -> Zeroconf:
    try:
        # Own loop thread even when the caller runs asyncio: our API is blocking.
        return Zeroconf(interfaces=addresses, ip_version=IPVersion.V4Only, use_asyncio=False)
    except TypeError:  # zeroconf < 0.150 has no use_asyncio
        return Zeroconf(interfaces=addresses, ip_version=IPVersion.V4Only)


class Discovery:
    """Advertise one device and/or browse the fleet, on explicitly chosen interfaces.

    ``interfaces`` are interface names or IPv4 addresses (see :func:`resolve_interfaces`).
    With ``fleet`` set, peers of other fleets are ignored and :meth:`advertise` only accepts
    a DeviceInfo of that fleet. Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        interfaces: str | Sequence[str] = ("127.0.0.1",),
        fleet: str | None = None,
        *,
        ttl: int = DEFAULT_TTL,
        resolve_timeout: float = 3.0,
        duplicate_check_timeout: float = 1.5,
    ) -> None:
        self.addresses = resolve_interfaces(interfaces)
        self.fleet = fleet
        self.ttl = ttl
        self.resolve_timeout = resolve_timeout
        self.duplicate_check_timeout = duplicate_check_timeout
        self._lock = threading.Lock()
        self._closed = False
        self._info: DeviceInfo | None = None
        self._service: ServiceInfo | None = None
        self._own_name: str | None = None  # set before probing so our own records are never a peer
        self._table: PeerTable | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._events: queue.SimpleQueue[tuple | None] = queue.SimpleQueue()
        self._dispatcher: threading.Thread | None = None
        self._zc = _new_zeroconf(self.addresses)
        log.debug("zeroconf bound to %s (fleet filter %s)", self.addresses, fleet)

    # -- advertising ---------------------------------------------------------------------------

    @property
    def info(self) -> DeviceInfo | None:
        """The DeviceInfo currently advertised, or None."""
        return self._info

    @property
    def service_name(self) -> str | None:
        """Our registered service name, or None when not advertising."""
        return self._service.name if self._service is not None else None

    def advertise(self, info: DeviceInfo, port: int = 0) -> None:
        """Register ``<device_id>._edge-agent._tcp.local.`` with ``info`` as TXT.

        Blocks for about ``duplicate_check_timeout`` + 1 s while the name is checked.
        Raises DuplicateDeviceError if a live process already advertises this device id,
        ValueError if ``info`` belongs to another fleet than this Discovery's filter, and
        RuntimeError if already advertising (use :meth:`update`) or closed.
        """
        self._check_open()
        self._check_fleet(info)
        if self._service is not None:
            raise RuntimeError(
                f"already advertising {self._service.name}; call update() to change the record"
            )
        service = self._service_info(info, port)
        # zeroconf's own probe asks QU questions; with several processes sharing port 5353 the
        # unicast answer may reach another process, so first ask with multicast answers.
        if self._table is not None and info.device_id in self._table:
            raise DuplicateDeviceError(info.device_id, service.name, "already in our peer table")
        self._own_name = service.name.lower()
        try:
            self._register(info, service)
        except BaseException:
            self._own_name = None
            raise
        with self._lock:
            self._service = service
            self._info = info
        log.info("advertising %s on %s port %d", service.name, ",".join(self.addresses), port)

    def _register(self, info: DeviceInfo, service: ServiceInfo) -> None:
        if self.duplicate_check_timeout > 0:
            found = self._zc.get_service_info(
                SERVICE_TYPE,
                service.name,
                timeout=int(self.duplicate_check_timeout * 1000),
                question_type=DNSQuestionType.QM,
            )
            if found is not None:
                try:
                    other_fleet = DeviceInfo.from_txt(found.properties).fleet
                except ValueError:
                    other_fleet = "?"
                where = ",".join(found.parsed_addresses(IPVersion.V4Only)) or "?"
                raise DuplicateDeviceError(
                    info.device_id, service.name, f"answered by {where} port {found.port} (fleet {other_fleet})"
                )
        try:
            self._zc.register_service(service, allow_name_change=False)
        except NonUniqueNameException as exc:
            raise DuplicateDeviceError(info.device_id, service.name, "name conflict while probing") from exc

    def update(self, info: DeviceInfo) -> None:
        """Re-announce changed TXT fields (same device id) to every browser."""
        self._check_open()
        self._check_fleet(info)
        if self._service is None or self._info is None:
            raise RuntimeError("update() before advertise()")
        if info.device_id != self._info.device_id:
            raise ValueError(
                f"update() cannot change the device id ({self._info.device_id!r} -> {info.device_id!r}); "
                "close and advertise again"
            )
        if info == self._info:
            return
        service = self._service_info(info, self._service.port or 0)
        self._zc.update_service(service)
        with self._lock:
            self._service = service
            self._info = info
        log.debug("re-announced %s: %s", service.name, info)

    def _service_info(self, info: DeviceInfo, port: int) -> ServiceInfo:
        return ServiceInfo(
            SERVICE_TYPE,
            service_name_for(info.device_id),
            port=port,
            properties=info.to_txt(),
            server=f"{info.device_id}.local.",
            addresses=[socket.inet_aton(addr) for addr in self.addresses],
            host_ttl=self.ttl,
            other_ttl=self.ttl,
        )

    def _check_fleet(self, info: DeviceInfo) -> None:
        if self.fleet is not None and info.fleet != self.fleet:
            raise ValueError(
                f"device {info.device_id!r} is in fleet {info.fleet!r} but this Discovery serves "
                f"fleet {self.fleet!r}"
            )

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("Discovery is closed")

    # -- browsing ------------------------------------------------------------------------------

    def browse(self, on_event: PeerCallback | None = None) -> PeerTable:
        """Start browsing (once) and return the live peer table.

        ``on_event(event, peer)`` is subscribed to the table; it runs on this Discovery's
        dispatch thread, so it may block briefly without stalling mDNS. A callback added by a
        later call first gets an "add" for every peer already known, in order with the rest.
        """
        self._check_open()
        with self._lock:
            table = self._table
            start = table is None
            if table is None:
                table = self._table = PeerTable()
        if on_event is not None:
            if start:
                table.subscribe(on_event)
            else:
                # Subscribe and replay on the dispatch thread, so no event slips in between.
                self._events.put(("subscribe", on_event))
        if start:
            self._dispatcher = threading.Thread(target=self._dispatch_loop, name="discovery-dispatch", daemon=True)
            self._dispatcher.start()
            self._run_on_loop(self._async_start_browser(), timeout=5.0)
        return table

    @property
    def table(self) -> PeerTable | None:
        """The peer table, or None before :meth:`browse`."""
        return self._table

    async def _async_start_browser(self) -> None:
        self._browser = AsyncServiceBrowser(
            self._zc,
            SERVICE_TYPE,
            handlers=[self._on_state_change],
            question_type=DNSQuestionType.QM,
        )

    def _on_state_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        """Browser handler, on zeroconf's loop: start resolution or queue a removal."""
        key = name.lower()
        if key == self._own_name:
            return
        pending = self._resolving.pop(key, None)
        if pending is not None:
            pending.cancel()
        if state_change is ServiceStateChange.Removed:
            self._events.put(("remove", name))
            return
        task = asyncio.ensure_future(self._async_resolve(name))
        self._resolving[key] = task
        task.add_done_callback(lambda done, key=key: self._resolve_done(key, done))

    def _resolve_done(self, key: str, task: asyncio.Task[None]) -> None:
        if self._resolving.get(key) is task:
            del self._resolving[key]
        if not task.cancelled() and task.exception() is not None:
            log.warning("resolving %s failed: %r", key, task.exception())

    async def _async_resolve(self, name: str) -> None:
        service = AsyncServiceInfo(SERVICE_TYPE, name)
        found = await service.async_request(
            self._zc, int(self.resolve_timeout * 1000), question_type=DNSQuestionType.QM
        )
        if not found:
            log.debug("no answer resolving %s within %.1f s", name, self.resolve_timeout)
            return
        try:
            info = DeviceInfo.from_txt(service.properties)
        except ValueError as exc:
            log.warning("ignoring %s: bad TXT record: %s", name, exc)
            return
        addresses = service.parsed_addresses(IPVersion.V4Only)
        self._events.put(("put", name, info, addresses, service.port or 0, time.time()))

    def _dispatch_loop(self) -> None:
        while True:
            item = self._events.get()
            if item is None:
                return
            try:
                self._apply(item)
            except Exception:
                log.exception("discovery event %r failed", item[:2])

    def _apply(self, item: tuple) -> None:
        table = self._table
        assert table is not None
        if item[0] == "subscribe":
            table.subscribe(item[1], replay=True)
            return
        if item[0] == "remove":
            peer = table.find_service(item[1])
            if peer is not None:
                table.remove(peer.device_id)
            return
        _, name, info, addresses, port, now = item
        if self.fleet is not None and info.fleet != self.fleet:
            peer = table.find_service(name)
            if peer is not None:
                table.remove(peer.device_id, reason=f"moved to fleet {info.fleet}")
            else:
                log.debug("ignoring %s of fleet %s", info.device_id, info.fleet)
            return
        known = table.get(info.device_id)
        if known is not None and known.service_name.lower() != name.lower():
            log.warning(
                "device id %s is advertised by two services: %s and %s", info.device_id, known.service_name, name
            )
        table.add(
            Peer(info=info, addresses=addresses, port=port, service_name=name, first_seen=now, last_seen=now)
        )

    # -- lifecycle -----------------------------------------------------------------------------

    def _run_on_loop(self, coro: object, timeout: float) -> object:
        loop = self._zc.loop
        assert loop is not None
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)  # type: ignore[arg-type]

    async def _async_stop_browsing(self) -> None:
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        for task in self._resolving.values():
            task.cancel()
        self._resolving.clear()

    def close(self) -> None:
        """Send goodbyes for our service, stop browsing and release the sockets; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            if self._zc.loop is not None and self._zc.loop.is_running():
                self._run_on_loop(self._async_stop_browsing(), timeout=5.0)
            if self._service is not None:
                self._zc.unregister_service(self._service)
                log.info("withdrew %s", self._service.name)
        except Exception:
            log.exception("error while withdrawing discovery service")
        finally:
            self._zc.close()
            self._events.put(None)
            if self._dispatcher is not None and self._dispatcher is not threading.current_thread():
                self._dispatcher.join(timeout=5.0)

    def __enter__(self) -> Discovery:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def find_broker(
    fleet: str | None = None,
    interfaces: str | Sequence[str] = ("127.0.0.1",),
    timeout: float = 3.0,
    grace: float = 0.5,
) -> str | None:
    """Browse until a peer advertises a broker URL and return it, or None after ``timeout`` s.

    A peer with role "broker" wins at once; if only agents that know a broker answer, wait up
    to ``grace`` seconds more for a "broker" peer before settling for the first agent's URL.
    """
    found = threading.Event()
    lock = threading.Lock()
    candidates: list[Peer] = []

    def on_event(event: str, peer: Peer) -> None:
        if event != "remove" and peer.info.broker:
            with lock:
                candidates.append(peer)
            found.set()

    def best() -> Peer | None:
        with lock:
            brokers = [peer for peer in candidates if peer.info.role == "broker"]
            return (brokers or candidates or [None])[0]

    deadline = time.monotonic() + timeout
    with Discovery(interfaces, fleet=fleet) as discovery:
        discovery.browse(on_event)
        if not found.wait(max(0.0, deadline - time.monotonic())):
            return None
        grace_end = min(deadline, time.monotonic() + grace)
        while True:
            choice = best()
            if choice is not None and choice.info.role == "broker":
                break
            remaining = grace_end - time.monotonic()
            if remaining <= 0:
                break
            found.clear()
            found.wait(min(remaining, 0.05))
    assert choice is not None
    log.info("found broker %s via %s (%s)", choice.info.broker, choice.device_id, choice.info.role)
    return choice.info.broker
