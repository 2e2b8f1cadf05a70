"""MQTT transport: one paho client per process, one publishing path, TCP_NODELAY, automatic reconnect.

Handlers run on paho's network thread and must only hand work off (queues); they never block or
publish-and-wait there. Everything speaks plain MQTT 3.1.1 so any standard broker (Mosquitto, the embedded
amqtt broker, EMQX, VerneMQ) works.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlparse

import paho.mqtt.client as mqtt

from edge_agent.protocol.errors import BrokerError
from edge_agent.transport.linkprobe import LinkProbe, LinkStats

log = logging.getLogger("edge_agent.transport")

Handler = Callable[[str, bytes, bool], None]
ENV_BROKER = "EDGE_AGENT_BROKER"
PROBE_MISSES = 4   # probe periods without an echo before a session that echoed is declared dead


@dataclass(frozen=True)
class BrokerURL:
    """``mqtt://host:port`` (plain TCP) or ``mqtts://host:port`` (TLS)."""

    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> BrokerURL:
        if "://" not in url:
            url = "mqtt://" + url
        u = urlparse(url)
        if u.scheme not in ("mqtt", "mqtts", "tcp"):
            raise BrokerError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
        if not u.hostname:
            raise BrokerError(f"broker URL {url!r} has no host")
        scheme = "mqtt" if u.scheme == "tcp" else u.scheme
        try:
            port = u.port or (8883 if scheme == "mqtts" else 1883)
        except ValueError as exc:
            raise BrokerError(f"broker URL {url!r}: {exc}") from None
        return cls(scheme, u.hostname, port)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


class Transport:
    """A connected MQTT client with topic handlers.

    ``will`` is (topic, payload, retain) published by the broker if this client vanishes.
    ``on_connect`` hooks run after every (re)connect, after subscriptions are restored.
    ``probe_topic``: the session is checked end to end, whatever the socket says: a small message to this
    topic (one only this client reads and writes) every ``probe_every_s``; when echoes that used to arrive
    stop for ``PROBE_MISSES`` periods, the connection is dropped and re-established (a broker that kept the
    TCP connection but lost the session, a stalled path). An identity that may not use the topic never
    gets a first echo, and then the probe stays passive. :meth:`measure_link` uses the same topic to measure
    the round trip and throughput to the broker (:mod:`edge_agent.transport.linkprobe`).
    """

    def __init__(self, url: str | BrokerURL, client_id: str | None = None, *, clean_session: bool = True,
                 will: tuple[str, bytes, bool] | None = None, keepalive: int = 10,
                 max_inflight: int = 64, username: str | None = None, password: str | None = None,
                 tls: dict | None = None, probe_topic: str | None = None, probe_every_s: float = 1.0) -> None:
        self.url = url if isinstance(url, BrokerURL) else BrokerURL.parse(url)
        self.client_id = client_id or f"ea-{uuid.uuid4().hex[:12]}"
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                   clean_session=clean_session, protocol=mqtt.MQTTv311)
        self._client.max_inflight_messages_set(max_inflight)
        self._client.reconnect_delay_set(min_delay=0.05, max_delay=2.0)
        if username:
            self._client.username_pw_set(username, password)
        if self.url.scheme == "mqtts":
            self._client.tls_set(**(tls or {}))
        if will is not None:
            self._client.will_set(will[0], will[1], qos=1, retain=will[2])
        self._keepalive = keepalive
        self._handlers: dict[str, tuple[Handler, int]] = {}
        self._hooks: list[Callable[[], None]] = []
        self._pub_lock = threading.Lock()
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.connect_count = 0
        self._closing = False
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_socket_open = self._on_socket_open
        self._client.on_message = self._on_unhandled
        self.probe_topic = probe_topic
        self.probe_every_s = probe_every_s
        self.stalls = 0                      # sessions found dead by the probe (and re-established)
        self._probe_seen = 0.0               # monotonic time of the last echo on this connection (0: none)
        self.link: LinkProbe | None = None
        if probe_topic is not None:
            self.link = LinkProbe(lambda payload: self.publish(probe_topic, payload, qos=1))
            # QoS 1: a sync() marker must queue behind the QoS 1 messages the broker holds for us (a broker
            # sends QoS 0 past its in-flight window, so a QoS 0 marker overtakes them); probes stay QoS 0
            self.subscribe(probe_topic, self._on_probe, qos=1)

    # ------------------------------------------------------------------------------ lifecycle
    def start(self, wait: float | None = 10.0) -> Transport:
        """Connect in the background (paho retries forever); wait up to ``wait`` s for the first CONNACK."""
        try:
            self._client.connect_async(self.url.host, self.url.port, keepalive=self._keepalive)
        except (OSError, ValueError) as exc:
            raise BrokerError(f"cannot connect to broker {self.url}: {exc}") from None
        self._client.loop_start()
        if self.probe_topic is not None:
            threading.Thread(target=self._probe_loop, name=f"session-probe-{self.client_id}", daemon=True).start()
        if wait is not None and not self.connected.wait(wait):
            self.close()
            raise BrokerError(f"no connection to broker {self.url} within {wait:.0f} s "
                              "(is it running? set --broker or EDGE_AGENT_BROKER)")
        return self

    def close(self, final: Callable[[], None] | None = None) -> None:
        """Run ``final`` (e.g. publish an offline state), flush, disconnect and stop the network thread."""
        if self._closing:
            return
        self._closing = True
        try:
            if final is not None and self.connected.is_set():
                final()
            self._client.disconnect()
        except Exception:  # pragma: no cover - best effort on shutdown
            log.debug("disconnect failed", exc_info=True)
        self._client.loop_stop()

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ pub/sub
    def subscribe(self, pattern: str, handler: Handler, qos: int = 1) -> None:
        """Route messages matching ``pattern`` to ``handler(topic, payload, retained)``."""
        with self._lock:
            self._handlers[pattern] = (handler, qos)

        def _cb(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
            self._dispatch(handler, msg)

        self._client.message_callback_add(pattern, _cb)
        if self.connected.is_set():
            self._client.subscribe(pattern, qos=qos)

    def unsubscribe(self, pattern: str) -> None:
        with self._lock:
            self._handlers.pop(pattern, None)
        self._client.message_callback_remove(pattern)
        if self.connected.is_set():
            self._client.unsubscribe(pattern)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> mqtt.MQTTMessageInfo:
        """Queue a message; QoS 1 messages survive reconnects (paho re-sends them)."""
        with self._pub_lock:
            return self._client.publish(topic, payload, qos=qos, retain=retain)

    def add_connect_hook(self, hook: Callable[[], None]) -> None:
        self._hooks.append(hook)

    # ------------------------------------------------------------------------------ session probe
    def _on_probe(self, topic: str, payload: bytes, retained: bool) -> None:
        self._probe_seen = time.monotonic()
        if payload and self.link is not None:
            self.link.on_echo(payload)

    def sync(self, timeout: float = 5.0) -> bool:
        """Wait until this client has handled every message the broker queued for it before now, e.g. the
        retained messages of its subscriptions; False if that could not be seen within ``timeout``.

        MQTT has no end-of-retained marker, so we make one: a link-probe round trip to our own probe topic.
        Our SUBSCRIBEs went out before it on the same connection, the broker queues a subscription's
        retained messages when it handles the SUBSCRIBE, and it delivers QoS 1 messages to one client in
        order (handlers run in arrival order on the network thread): when the echo comes back at QoS 1,
        everything queued before it at QoS 1 has been handled (QoS 0 messages are not waited for).
        """
        if self.link is None:
            raise BrokerError(f"client {self.client_id} has no probe topic: cannot sync")
        end = time.monotonic() + timeout
        if not self.connected.wait(timeout):
            return False
        return self.link.round_trip(end - time.monotonic()) is not None

    def measure_link(self, **kw: object) -> LinkStats:
        """Round trip and throughput to the broker through the probe topic (``LinkProbe.measure``'s
        options); BrokerError when there is no probe topic, no connection, or the echoes do not come."""
        if self.link is None:
            raise BrokerError(f"client {self.client_id} has no probe topic: cannot measure its link")
        if not self.connected.is_set():
            raise BrokerError(f"cannot measure the link to {self.url}: not connected")
        try:
            return self.link.measure(**kw)  # type: ignore[arg-type]
        except TimeoutError as exc:
            raise BrokerError(f"link to {self.url}: {exc}") from None

    def _probe_loop(self) -> None:
        while not self._closing:
            time.sleep(self.probe_every_s)
            if self._closing or not self.connected.is_set():
                continue
            try:
                self.publish(self.probe_topic, b"", qos=0)
            except Exception:  # pragma: no cover - a publish on a dying client
                continue
            seen = self._probe_seen
            if seen and time.monotonic() - seen > PROBE_MISSES * self.probe_every_s:
                self.stalls += 1
                log.warning("session with broker %s stalled: no echo of its own probe for %.1f s; reconnecting",
                            self.url, time.monotonic() - seen)
                self._probe_seen = 0.0
                self._drop_socket()

    def _drop_socket(self) -> None:
        """Shut the socket down: paho sees a lost connection and reconnects with back-off."""
        sock = self._client.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # ------------------------------------------------------------------------------ paho callbacks
    def _dispatch(self, handler: Handler, msg: mqtt.MQTTMessage) -> None:
        try:
            handler(msg.topic, msg.payload, bool(msg.retain))
        except Exception:
            log.exception("handler for %s failed", msg.topic)

    def _on_unhandled(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        log.debug("message on %s without handler", msg.topic)

    def _on_socket_open(self, client: mqtt.Client, userdata: object, sock: socket.socket) -> None:
        # Without TCP_NODELAY a small QoS 1 round trip costs ~88 ms here (Nagle + delayed ACK), 0.6 ms with it.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object,
                    properties: object = None) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("broker %s refused connection: %s", self.url, reason)
            return
        with self._lock:
            subs = list(self._handlers.items())
        for pattern, (_, qos) in subs:
            client.subscribe(pattern, qos=qos)
        self.connect_count += 1
        self._probe_seen = 0.0   # a fresh session: the probe arms again at its first echo
        if self.connect_count > 1:
            log.info("reconnected to broker %s", self.url)
        self.connected.set()
        for hook in list(self._hooks):
            try:
                hook()
            except Exception:
                log.exception("connect hook failed")

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object, reason: object,
                       properties: object = None) -> None:
        self.connected.clear()
        if not self._closing:
            log.warning("lost connection to broker %s (%s); reconnecting", self.url, reason)


def broker_from_env(explicit: str | None) -> str | None:
    """The broker URL given explicitly, else from $EDGE_AGENT_BROKER, else None."""
    return explicit or os.environ.get(ENV_BROKER) or None
