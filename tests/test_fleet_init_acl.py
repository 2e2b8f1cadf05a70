"""`fleet init` output run by a real Mosquitto: who may connect, publish and read what.

Mosquitto drops unauthorised MQTT 3.1.1 publishes silently (the publisher still gets its PUBACK) and does not
deliver messages a subscriber may not read. So "X cannot do Y" is shown as: X does Y, then a control message
that X may send travels the same path and arrives; the forbidden message never does. Messages of one
publisher reach a subscriber in order, so once the control message is in, the forbidden one would have been.
"""

from __future__ import annotations

import queue
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge_agent.protocol import topics
from edge_agent.security.broker_config import check_password, hash_password
from edge_agent.security.pki import (
    Credentials,
    FleetInitError,
    add_identity,
    init_fleet,
    revoke_identity,
)
from edge_agent.transport.broker import free_port, wait_port
from edge_agent.transport.mqtt import Transport

FLEET = "default"
DEVICES = ["cam-01", "cam-02", "gw-01"]
WAIT = 5.0          # upper bound for anything that should happen
QUIET = 0.3         # extra wait after the control message before asserting an absence


def t(*parts: str) -> str:
    return "/".join([topics.fleet_root(FLEET), *parts])


@dataclass
class Fleet:
    dir: Path
    tls_port: int
    plain_port: int
    creds: dict[str, Credentials]
    proc: subprocess.Popen


def _start_mosquitto(conf: Path, ports: list[int], exe: str) -> subprocess.Popen:
    log = open(conf.parent / "broker.out", "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        for port in ports:
            wait_port("127.0.0.1", port, 10.0, proc)
    except Exception:
        proc.kill()
        proc.wait(5)
        raise AssertionError(f"mosquitto did not start: {(conf.parent / 'broker.out').read_text()}") from None
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def fleet(mosquitto_available: str) -> Iterator[Fleet]:
    # A directory directly under /tmp, not pytest's 0700 tree: when the tests run as root, Mosquitto drops
    # to its own user, exactly as in production, and must still reach the files fleet init gave it.
    out = Path(tempfile.mkdtemp(prefix="ea-fleet-"))
    tls_port = free_port()
    plain_port = free_port()
    while plain_port == tls_port:
        plain_port = free_port()
    try:
        res = init_fleet(out, DEVICES, fleet=FLEET, port=tls_port, plain_port=plain_port)
        proc = _start_mosquitto(res.conf_path, [tls_port, plain_port], mosquitto_available)
        try:
            yield Fleet(out, tls_port, plain_port, {n: Credentials.from_file(p) for n, p in res.creds.items()},
                        proc)
        finally:
            _stop(proc)
    finally:
        shutil.rmtree(out, ignore_errors=True)


# --------------------------------------------------------------------------------------------- raw client

class Client:
    """A raw paho client that records connection outcome, SUBACK codes and received messages."""

    def __init__(self, name: str, client_id: str | None = None) -> None:
        self.name = name
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=client_id or f"t-{name}-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv311)
        self.connected = threading.Event()
        self.ended = threading.Event()
        self.reason = ""
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._acks: dict[int, threading.Event] = {}
        self._granted: dict[int, list] = {}
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.c.on_subscribe = self._on_subscribe
        self.c.on_publish = lambda c, u, mid, rc, p: self._ack(mid).set()

    def _ack(self, mid: int) -> threading.Event:
        return self._acks.setdefault(mid, threading.Event())

    def _on_connect(self, c, u, flags, reason, props) -> None:
        self.reason = str(reason)
        (self.ended if reason.is_failure else self.connected).set()

    def _on_disconnect(self, c, u, flags, reason, props) -> None:
        self.reason = self.reason or str(reason)
        self.ended.set()

    def _on_subscribe(self, c, u, mid, reasons, props) -> None:
        self._granted[mid] = [r.value for r in reasons]
        self._ack(mid).set()

    def connect(self, port: int, *, cred: Credentials | None = None, cert: bool = True,
                username: str | None = None, password: str | None = None, tls: dict | None = None) -> bool:
        """True once CONNACK accepted; False when refused, reset or failed (reason in ``self.reason``)."""
        if username is not None:
            self.c.username_pw_set(username, password)
        if tls is None and cred is not None and cert:
            tls = {"ca_certs": cred.ca_file, "certfile": cred.cert_file, "keyfile": cred.key_file}
        if tls is not None:
            self.c.tls_set(**tls)
        self.c.reconnect_delay_set(60, 60)  # no retry storm on refusal
        try:
            self.c.connect("127.0.0.1", port, keepalive=10)
        except (OSError, ssl.SSLError) as exc:
            self.reason = f"{type(exc).__name__}: {exc}"
            return False
        self.c.loop_start()
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.connected.is_set():
                return True
            if self.ended.is_set():
                return False
            time.sleep(0.01)
        self.reason = self.reason or "no CONNACK"
        return False

    def subscribe(self, topic: str) -> int:
        """SUBACK code: 0/1 granted QoS, 128 refused."""
        rc, mid = self.c.subscribe(topic, qos=1)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        assert self._ack(mid).wait(WAIT), f"{self.name}: no SUBACK for {topic}"
        return self._granted[mid][0]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        assert self._ack(info.mid).wait(WAIT), f"{self.name}: no PUBACK for {topic}"

    def wait_for(self, topic: str, payload: bytes) -> list[tuple[str, bytes]]:
        """Everything received until (topic, payload) arrives, then for QUIET seconds more."""
        seen, deadline = [], time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                msg = self.messages.get(timeout=0.05)
            except queue.Empty:
                continue
            seen.append(msg)
            if msg == (topic, payload):
                end = time.monotonic() + QUIET
                while time.monotonic() < end:
                    try:
                        seen.append(self.messages.get(timeout=0.05))
                    except queue.Empty:
                        pass
                return seen
        pytest.fail(f"{self.name}: control message on {topic} never arrived; got {seen}")

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def clients(fleet: Fleet) -> Iterator[callable]:
    made: list[Client] = []

    def make(name: str, via: str = "tls", **kw) -> Client:
        cl = Client(name)
        made.append(cl)
        cred = fleet.creds[name] if name in fleet.creds else None
        if via == "tls":
            ok = cl.connect(fleet.tls_port, cred=cred, **kw)
        else:
            kw.setdefault("username", cred.username)
            kw.setdefault("password", cred.password)
            ok = cl.connect(fleet.plain_port, cert=False, **kw)
        assert ok, f"{name} could not connect via {via}: {cl.reason}"
        return cl

    yield make
    for cl in made:
        cl.close()


# --------------------------------------------------------------------------------------------- generation

def test_init_writes_every_identity_with_private_files_and_refuses_to_overwrite(tmp_path):
    res = init_fleet(tmp_path / "b", ["cam-01"], fleet="lab", port=8883, plain_port=1883, host="10.0.0.5",
                     broker_user="root")
    out = tmp_path / "b"
    assert set(res.creds) == {"operator", "cam-01"}
    for name in ("ca.key", "server.key", "cam-01.key", "operator.key", "cam-01.cred", "passwd"):
        assert (out / name).stat().st_mode & 0o077 == 0, f"{name} is readable by others"
    cred = Credentials.from_file(res.creds["cam-01"])
    assert cred.username == "cam-01" and cred.fleet == "lab"
    assert cred.broker_url == "mqtts://10.0.0.5:8883" and cred.plain_url == "mqtt://10.0.0.5:1883"
    assert Path(cred.cert_file) == out / "cam-01.crt" and Path(cred.ca_file).is_absolute()
    assert '"ca_file": "ca.crt"' in res.creds["cam-01"].read_text()  # relative: the dir can be copied
    users = dict(line.split(":", 1) for line in (out / "passwd").read_text().splitlines())
    assert set(users) == {"operator", "cam-01"}
    assert check_password(cred.password, users["cam-01"]) and not check_password("x", users["cam-01"])
    conf = res.conf_path.read_text()
    for line in ("require_certificate true", "use_identity_as_username true", "allow_anonymous false",
                 "set_tcp_nodelay true", "max_queued_messages 100000", "persistence true",
                 f"acl_file {out}/acl", f"password_file {out}/passwd", "listener 8883 10.0.0.5",
                 f"crlfile {out}/crl.pem"):
        assert line in conf
    acl = (out / "acl").read_text()
    assert "pattern write ea/v1/lab/dev/%u/state" in acl and "user operator\ntopic read ea/v1/lab/#" in acl
    assert "topic readwrite ea/v1/lab/#" not in acl and "topic write ea/v1/lab/dev/+/state" not in acl
    for line in ("use_username_as_clientid true", "max_packet_size", "max_queued_bytes", "max_connections"):
        assert line in conf
    assert "deploy/# " not in acl.replace("pattern read ea/v1/lab/deploy/#", "")
    with pytest.raises(FleetInitError, match="already holds"):
        init_fleet(out, ["cam-01"], fleet="lab")
    init_fleet(out, ["cam-02"], fleet="lab", overwrite=True, broker_user="root")
    assert (out / "cam-02.cred").exists()


@pytest.mark.parametrize("devices, operator, match", [
    (["cam/01"], "operator", "invalid device name"),
    (["+"], "operator", "invalid device name"),
    (["cam-01", "cam-01"], "operator", "repeat"),
    (["operator"], "operator", "operator's name"),
    (["cam-01"], "op#", "invalid operator name"),
])
def test_init_refuses_names_that_would_break_the_acl(tmp_path, devices, operator, match):
    with pytest.raises((FleetInitError, ValueError), match=match):
        init_fleet(tmp_path, devices, operator=operator)


def test_python_password_hashes_match_mosquitto_passwd(tmp_path):
    exe = shutil.which("mosquitto_passwd")
    if exe is None:
        pytest.skip("mosquitto_passwd not installed")
    for scheme in ("sha512-pbkdf2", "sha512"):
        pw = tmp_path / f"pw-{scheme}"
        subprocess.run([exe, "-c", "-H", scheme, "-b", str(pw), "alice", "s3cret:$x"], check=True)
        hashed = pw.read_text().strip().split(":", 1)[1]
        assert hashed.startswith("$7$" if scheme == "sha512-pbkdf2" else "$6$")
        assert check_password("s3cret:$x", hashed) and not check_password("s3cret", hashed)
    assert check_password("pw", hash_password("pw", scheme="sha512"))
    assert check_password("pw", hash_password("pw", iterations=101))


# --------------------------------------------------------------------------------------------- authentication

def test_device_connects_with_certificate_and_with_password(clients):
    assert clients("cam-01", "tls").connected.is_set()
    assert clients("cam-01", "plain").connected.is_set()


def test_wrong_or_missing_password_is_refused(fleet: Fleet):
    cam = fleet.creds["cam-01"]
    attempts = {"wrong password": dict(username="cam-01", password="not-it"),
                "another device's password": dict(username="cam-01", password=fleet.creds["cam-02"].password),
                "unknown user": dict(username="mallory", password=cam.password),
                "anonymous": {}}
    for what, kw in attempts.items():
        cl = Client("x")
        try:
            assert not cl.connect(fleet.plain_port, cert=False, **kw), f"{what} was accepted"
        finally:
            cl.close()


def test_tls_listener_refuses_clients_without_a_fleet_certificate(fleet: Fleet, tmp_path):
    cam = fleet.creds["cam-01"]
    foreign = init_fleet(tmp_path / "foreign", ["cam-01"], broker_user="root")  # same CN, another CA
    fc = Credentials.from_file(foreign.creds["cam-01"])
    attempts = {
        "no client certificate": {"ca_certs": cam.ca_file},
        "certificate from another CA": {"ca_certs": cam.ca_file, "certfile": fc.cert_file,
                                        "keyfile": fc.key_file},
    }
    for what, tls in attempts.items():
        cl = Client("x")
        try:
            assert not cl.connect(fleet.tls_port, tls=tls, username="cam-01", password=cam.password), \
                f"{what} was accepted"
        finally:
            cl.close()
    plain_to_tls = Client("x")
    try:
        assert not plain_to_tls.connect(fleet.tls_port, cert=False, username="cam-01", password=cam.password)
    finally:
        plain_to_tls.close()


def test_our_transport_connects_with_credential_files_over_tls_and_password(fleet: Fleet, clients):
    op = clients("operator")
    assert op.subscribe(t("dev/+/state")) == 1
    for via in ("tls", "plain"):
        cred = Credentials.from_file(fleet.dir / "gw-01.cred")
        url = cred.broker_url if via == "tls" else cred.plain_url
        with Transport(url, **cred.transport_kwargs()) as tr:
            tr.start(wait=WAIT)
            tr.publish(topics.state(FLEET, "gw-01"), via.encode()).wait_for_publish(WAIT)
            op.wait_for(t("dev/gw-01/state"), via.encode())


# --------------------------------------------------------------------------------------------- authorisation

@pytest.mark.parametrize("via, kind", [("tls", "state"), ("plain", "state"), ("tls", "load")])
def test_device_cannot_publish_another_devices_state_or_load(clients, via, kind):
    op = clients("operator")
    assert op.subscribe(t(f"dev/+/{kind}")) == 1
    cam1 = clients("cam-01", via)
    cam1.publish(t(f"dev/cam-02/{kind}"), b"forged: cam-02 offline / overloaded")
    cam1.publish(t(f"dev/cam-01/{kind}"), b"control")
    seen = op.wait_for(t(f"dev/cam-01/{kind}"), b"control")
    assert all(topic != t(f"dev/cam-02/{kind}") for topic, _ in seen), seen


def test_tls_identity_is_the_certificate_cn_not_the_username_claimed(fleet: Fleet, clients):
    op = clients("operator")
    assert op.subscribe(t("#")) == 1
    # cam-01's certificate, but claiming to be the operator with the operator's password
    cam1 = clients("cam-01", "tls", username="operator", password=fleet.creds["operator"].password)
    cam1.publish(t("deploy/evil"), b"as operator?", retain=True)
    cam1.publish(t("dev/operator/state"), b"as operator?")
    cam1.publish(t("dev/cam-01/state"), b"control")
    seen = op.wait_for(t("dev/cam-01/state"), b"control")
    assert seen == [(t("dev/cam-01/state"), b"control")]


@pytest.mark.parametrize("via", ["tls", "plain"])
def test_device_cannot_publish_a_deployment_canary_or_rollout(clients, via):
    op = clients("operator")
    for sub in ("deploy/#", "canary/#", "rollout/#", "dev/+/state"):
        assert op.subscribe(t(sub)) == 1
    gw = clients("gw-01", via)
    gw.publish(t("deploy/ocr"), b"evil manifest", retain=True)
    gw.publish(t("deploy/ocr/extra"), b"evil manifest")
    gw.publish(t("canary/ocr"), b"evil manifest", retain=True)
    gw.publish(t("rollout/ocr"), b"fake history", retain=True)
    gw.publish(t("dev/gw-01/state"), b"control")
    seen = op.wait_for(t("dev/gw-01/state"), b"control")
    assert seen == [(t("dev/gw-01/state"), b"control")]
    late = clients("cam-02")  # nothing was retained either
    for sub in ("deploy/#", "canary/#", "dev/cam-02/state"):
        assert late.subscribe(t(sub)) == 1
    late.publish(t("dev/cam-02/state"), b"control")
    assert late.wait_for(t("dev/cam-02/state"), b"control") == [(t("dev/cam-02/state"), b"control")]


@pytest.mark.parametrize("inbox", ["in", "blob", "cmd"])
def test_device_cannot_read_another_devices_inbox_but_reads_its_own(clients, inbox):
    cam1, cam2, gw = clients("cam-01"), clients("cam-02", "plain"), clients("gw-01")
    assert cam1.subscribe(t(f"dev/cam-01/{inbox}/+")) == 1
    cam2.subscribe(t(f"dev/cam-01/{inbox}/+"))     # granted or refused: either way nothing may arrive
    cam2.subscribe(t(f"dev/+/{inbox}/+"))
    assert cam2.subscribe(t(f"dev/cam-02/{inbox}/+")) == 1
    gw.publish(t(f"dev/cam-01/{inbox}/gw-01"), b"cam-01's input tensors")
    gw.publish(t(f"dev/cam-02/{inbox}/gw-01"), b"control")
    seen = cam2.wait_for(t(f"dev/cam-02/{inbox}/gw-01"), b"control")
    assert all(not topic.startswith(t(f"dev/cam-01/{inbox}")) for topic, _ in seen), seen
    # the rightful owner did get it: the publish was allowed, only the eavesdropper was refused
    assert cam1.wait_for(t(f"dev/cam-01/{inbox}/gw-01"), b"cam-01's input tensors")


def test_device_wildcard_subscription_sees_only_what_it_may_read(clients):
    cam2 = clients("cam-02")
    cam2.subscribe(t("#"))
    gw = clients("gw-01")
    sent = [(t("dev/cam-01/in/gw-01"), b"no"), (t("dev/cam-01/blob/gw-01"), b"no"), (t("dev/cam-01/cmd/gw-01"), b"no"),
            (t("ctl/op/out/gw-01"), b"no"), (t("dev/gw-01/state"), b"yes"), (t("dev/gw-01/load"), b"yes"),
            (t("dev/cam-02/in/gw-01"), b"yes"),
            (t("dev/cam-02/blob/gw-01"), b"yes"), (t("dev/cam-02/cmd/gw-01"), b"control")]
    for topic, payload in sent:
        gw.publish(topic, payload)
    seen = cam2.wait_for(t("dev/cam-02/cmd/gw-01"), b"control")
    assert sorted(seen) == sorted(m for m in sent if m[1] != b"no"), seen


def test_device_may_forward_tensors_answer_peers_and_results_under_its_own_name(clients):
    op, cam1 = clients("operator"), clients("cam-01")
    assert op.subscribe(t("ctl/op/#")) == 1 and cam1.subscribe(t("dev/cam-01/#")) == 1
    gw = clients("gw-01", "plain")
    for kind in ("in", "cmd", "blob"):
        gw.publish(t(f"dev/cam-01/{kind}/gw-01"), b"peer")
        # under another device's name (a forged sender), or with no sender level: refused
        gw.publish(t(f"dev/cam-01/{kind}/cam-02"), b"forged")
        gw.publish(t(f"dev/cam-01/{kind}"), b"anonymous")
    gw.publish(t("ctl/op/out/cam-02"), b"forged result")
    gw.publish(t("ctl/op/out/gw-01"), b"result")
    gw.publish(t("ctl/op/cmd/gw-01"), b"blob request")
    gw.publish(t("ctl/op/blob/gw-01"), b"not allowed")
    gw.publish(t("ctl/op/cmd/gw-01"), b"control")
    assert cam1.wait_for(t("dev/cam-01/blob/gw-01"), b"peer") == [
        (t("dev/cam-01/in/gw-01"), b"peer"), (t("dev/cam-01/cmd/gw-01"), b"peer"),
        (t("dev/cam-01/blob/gw-01"), b"peer")]
    assert op.wait_for(t("ctl/op/cmd/gw-01"), b"control") == [
        (t("ctl/op/out/gw-01"), b"result"), (t("ctl/op/cmd/gw-01"), b"blob request"),
        (t("ctl/op/cmd/gw-01"), b"control")]


@pytest.mark.parametrize("via", ["tls", "plain"])
def test_operator_may_deploy_and_read_everything_but_not_speak_for_a_device(clients, via):
    """A leaked operator credential (without fleet.key) cannot fake a device's state, load, stream stats or
    results: the operator's ACL allows only what an operator client publishes."""
    cam1, cam2 = clients("cam-01"), clients("cam-02")
    for sub in ("deploy/#", "canary/#", "rollout/#", "dev/+/state", "dev/+/load", "dev/+/streams", "dev/cam-02/#"):
        cam2.subscribe(t(sub))
    op = clients("operator", via)
    assert op.subscribe(t("dev/cam-01/in/+")) == 1 and op.subscribe(t("rollout/#")) == 1
    op.publish(t("deploy/ocr"), b"signed manifest", retain=True)
    op.publish(t("canary/ocr"), b"signed canary", retain=True)
    op.publish(t("rollout/ocr"), b"history")
    for forged in ("dev/cam-01/state", "dev/cam-01/load", "dev/cam-01/streams", "dev/cam-02/out/cam-01",
                   "dev/cam-02/probe"):
        op.publish(t(forged), b"operator override")
    op.publish(t("dev/cam-02/in/op-1"), b"request")
    op.publish(t("dev/cam-02/blob/op-1"), b"chunk")
    op.publish(t("dev/cam-02/cmd/op-1"), b"control")
    got = cam2.wait_for(t("dev/cam-02/cmd/op-1"), b"control")
    assert not [m for m in got if m[1] == b"operator override"], got
    assert (t("dev/cam-02/in/op-1"), b"request") in got and (t("dev/cam-02/blob/op-1"), b"chunk") in got
    assert (t("deploy/ocr"), b"signed manifest") in got and (t("canary/ocr"), b"signed canary") in got
    assert all(not topic.startswith(t("rollout")) for topic, _ in got), "devices may not read rollout/"
    assert op.wait_for(t("rollout/ocr"), b"history")
    cam2.publish(t("dev/cam-01/in/cam-02"), b"tensors")
    assert op.wait_for(t("dev/cam-01/in/cam-02"), b"tensors")
    for name in ("deploy/ocr", "canary/ocr"):  # undeploy: leave no retained message behind
        op.publish(t(name), b"", retain=True)
    assert cam1.subscribe(t("deploy/#")) == 1


def test_legacy_sha512_password_hash_is_accepted_by_mosquitto(mosquitto_available, tmp_path):
    out = Path(tempfile.mkdtemp(prefix="ea-fleet-"))
    try:
        tls_port, plain_port = free_port(), free_port()
        res = init_fleet(out, ["cam-01"], port=tls_port, plain_port=plain_port)
        cred = Credentials.from_file(res.creds["cam-01"])
        passwd = out / "passwd"
        lines = [ln for ln in passwd.read_text().splitlines() if not ln.startswith("cam-01:")]
        passwd.write_text("\n".join([*lines, f"cam-01:{hash_password(cred.password, scheme='sha512')}"]) + "\n")
        proc = _start_mosquitto(res.conf_path, [tls_port, plain_port], mosquitto_available)
        try:
            ok, bad = Client("cam-01"), Client("cam-01")
            try:
                assert ok.connect(plain_port, cert=False, username="cam-01", password=cred.password), ok.reason
                assert not bad.connect(plain_port, cert=False, username="cam-01", password="nope")
            finally:
                ok.close()
                bad.close()
        finally:
            _stop(proc)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_added_identity_connects_and_revoked_identity_is_refused(mosquitto_available, tmp_path):
    out = Path(tempfile.mkdtemp(prefix="ea-fleet-"))
    made: list[Client] = []

    def attempt(port: int, cred: Credentials, tls: bool) -> Client:
        cl = Client(cred.username)
        made.append(cl)
        if tls:
            cl.connect(port, cred=cred)
        else:
            cl.connect(port, cert=False, username=cred.username, password=cred.password)
        return cl

    try:
        tls_port, plain_port = free_port(), free_port()
        res = init_fleet(out, ["cam-01", "cam-02"], port=tls_port, plain_port=plain_port)
        for name in ("cam-01.cred", "cam-01.crt", "cam-01.key", "ca.crt"):  # the device's own copy
            shutil.copy(out / name, tmp_path / name)
        cam1 = Credentials.from_file(tmp_path / "cam-01.cred")
        cam2 = Credentials.from_file(res.creds["cam-02"])
        proc = _start_mosquitto(res.conf_path, [tls_port, plain_port], mosquitto_available)
        try:
            new = Credentials.from_file(add_identity(out, "cam-09"))
            assert new.fleet == FLEET and new.broker_url == cam2.broker_url
            with pytest.raises(FleetInitError, match="already exists"):
                add_identity(out, "cam-09")
            assert attempt(tls_port, new, tls=True).connected.is_set()  # TLS: trusted CA, nothing to reload
            assert not attempt(plain_port, new, tls=False).connected.is_set()  # passwd not reloaded yet
            session = attempt(plain_port, cam1, tls=False)
            assert session.connected.is_set()

            revoke_identity(out, "cam-01")
            assert not (out / "cam-01.key").exists() and "cam-01:" not in (out / "passwd").read_text()
            proc.send_signal(signal.SIGHUP)  # reloads passwd and the CRL
            assert session.ended.wait(WAIT), "the revoked device's password session was not closed"
            assert attempt(plain_port, new, tls=False).connected.is_set()
            assert not attempt(plain_port, cam1, tls=False).connected.is_set()
            assert not attempt(tls_port, cam1, tls=True).connected.is_set()
            assert attempt(tls_port, cam2, tls=True).connected.is_set()
            # an open TLS session survives SIGHUP; a restart ends it, and it cannot come back
            _stop(proc)
            proc = _start_mosquitto(res.conf_path, [tls_port, plain_port], mosquitto_available)
            assert not attempt(tls_port, cam1, tls=True).connected.is_set()
            assert attempt(tls_port, new, tls=True).connected.is_set()
        finally:
            for cl in made:
                cl.close()
            _stop(proc)
    finally:
        shutil.rmtree(out, ignore_errors=True)


# --------------------------------------------------------------------------------------------- streams

def test_devices_may_do_what_streams_need_and_no_more(clients):
    """Hosted sources only under the device's own src/ subtree, results only in src/_out/ or back to an
    ingress's out inbox; stream definitions only from the operator; nothing outside the fleet tree without
    `fleet init --stream-topics`."""
    gw = clients("gw-01")
    for topic in (t("src", "#"), t("stream", "#"), t("dev", "gw-01", "out", "+"), "results/#"):
        assert gw.subscribe(topic) == 1
    cam = clients("cam-01")
    allowed = [(t("src", "cam-01", "cam"), b"own source"), (t("src", "_out", "door"), b"result for a stream"),
               (t("dev", "gw-01", "out", "cam-01"), b"last stage answers the ingress")]
    forbidden = [(t("src", "cam-02", "cam"), b"spoofed source"), (t("stream", "evil"), b"stream definition"),
                 (t("dev", "gw-01", "out", "cam-02"), b"an answer under another device's name"),
                 ("results/door", b"outside the fleet tree")]
    for topic, payload in forbidden + allowed:
        cam.publish(topic, payload)
    cam.publish(t("src", "cam-01", "ctl"), b"control")
    seen = gw.wait_for(t("src", "cam-01", "ctl"), b"control")
    for msg in allowed:
        assert msg in seen, f"{msg} was not delivered"
    for msg in forbidden:
        assert msg not in seen, f"{msg} got through"
    op = clients("operator")
    op.publish(t("stream", "door"), b"definition", retain=False)
    assert (t("stream", "door"), b"definition") in gw.wait_for(t("stream", "door"), b"definition")


def test_stream_topics_of_fleet_init_open_only_those_filters(tmp_path):
    acl = init_fleet(tmp_path / "s", ["cam-01"], stream_topics=["cams/#"]).conf_path.parent / "acl"
    text = acl.read_text()
    assert "pattern readwrite cams/#" in text and "topic readwrite cams/#" in text
    with pytest.raises(ValueError, match="stream topic filter"):
        init_fleet(tmp_path / "t", ["cam-01"], stream_topics=["#"])


@pytest.mark.parametrize("via", ["tls", "plain"])
def test_a_client_cannot_take_over_another_identitys_connection_by_its_client_id(fleet: Fleet, clients, via):
    """MQTT hands a client id to the newest connection and kicks the older one off. The broker replaces every
    client id by the identity (use_username_as_clientid), so a stolen device credential connecting under the
    agent's or the operator's client id kicks off only its own identity's session."""
    made: list[Client] = []

    def connect(name: str, client_id: str) -> Client:
        cl = Client(name, client_id)
        made.append(cl)
        cred = fleet.creds[name]
        ok = (cl.connect(fleet.tls_port, cred=cred) if via == "tls"
              else cl.connect(fleet.plain_port, cert=False, username=name, password=cred.password))
        assert ok, cl.reason
        return cl

    try:
        # the client ids the agent (ea-<fleet>-<name>) and an operator Fleet (its username) connect with
        victims = {"cam-01": connect("cam-01", "ea-default-cam-01"), "operator": connect("operator", "operator")}
        probes = {"cam-01": t("dev/cam-01/probe"), "operator": t("ctl/op/probe")}
        for name, victim in victims.items():
            assert victim.subscribe(probes[name]) == 1
        for victim_id in ("ea-default-cam-01", "operator"):
            thief = connect("gw-01", victim_id)
            thief.publish(t("dev/gw-01/state"), b"connected")   # the thief's session is fully up
            thief.close()
        for name, victim in victims.items():
            assert not victim.ended.is_set(), f"{name} was kicked off: {victim.reason}"
            victim.publish(probes[name], b"still here")
            assert victim.wait_for(probes[name], b"still here")
    finally:
        for cl in made:
            cl.close()


def test_a_viewer_reads_the_fleet_state_and_documents_and_writes_nothing(mosquitto_available):
    out = Path(tempfile.mkdtemp(prefix="ea-fleet-"))
    try:
        port = free_port()
        res = init_fleet(out, ["cam-01"], port=port, viewers=["dash"])
        proc = _start_mosquitto(res.conf_path, [port], mosquitto_available)
        creds = {n: Credentials.from_file(p) for n, p in res.creds.items()}
        made = []
        try:
            def connect(name: str) -> Client:
                cl = Client(name)
                made.append(cl)
                assert cl.connect(port, cred=creds[name]), cl.reason
                return cl
            dash, cam, op = connect("dash"), connect("cam-01"), connect("operator")
            assert dash.subscribe(t("#")) == 1
            assert cam.subscribe(t("#")) == 1
            for topic in ("deploy/m", "dev/cam-01/state", "dev/cam-01/in/dash", "dev/cam-01/cmd/dash", "fresh",
                          "dev/dash/state", "dev/dash/load", "src/dash/frames", "dev/cam-01/blob/dash"):
                dash.publish(t(topic), b"viewer wrote")
            op.publish(t("deploy/m"), b"signed manifest")
            op.publish(t("dev/cam-01/in/op-1"), b"input tensor")
            cam.publish(t("dev/cam-01/state"), b"ready")
            seen = dash.wait_for(t("dev/cam-01/state"), b"ready")
            assert (t("deploy/m"), b"signed manifest") in seen
            assert (t("dev/cam-01/in/op-1"), b"input tensor") not in seen, "a viewer must not see tensors"
            assert not [m for m in cam.wait_for(t("dev/cam-01/state"), b"ready") if m[1] == b"viewer wrote"]
            with pytest.raises(FleetInitError, match="viewer"):
                init_fleet(out / "again", ["cam-01"], viewers=["cam-01"])
        finally:
            for cl in made:
                cl.close()
            _stop(proc)
    finally:
        shutil.rmtree(out, ignore_errors=True)
