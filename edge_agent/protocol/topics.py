"""The MQTT topic tree, in one place.

::

    ea/v1/<fleet>/dev/<id>/state        retained DeviceState (Last Will: the same with online=false)
    ea/v1/<fleet>/dev/<id>/in/<from>    InferRequest for a stage on this device            (QoS 1)
    ea/v1/<fleet>/dev/<id>/cmd/<from>   BlobRequest and other commands to this device      (QoS 1)
    ea/v1/<fleet>/dev/<id>/blob/<from>  BlobChunk answers for this device                  (QoS 1)
    ea/v1/<fleet>/ctl/<id>/out/<from>   InferResult for an operator / API client           (QoS 1)
    ea/v1/<fleet>/ctl/<id>/cmd/<from>   BlobRequest to an operator serving shards          (QoS 1)
    ea/v1/<fleet>/ctl/<id>/blob/<from>  BlobChunk answers for an operator                  (QoS 1)
    ea/v1/<fleet>/dev/<id>/load         LoadReport telemetry for routing among replicas     (QoS 0)
    ea/v1/<fleet>/dev/<id>/probe        the device's probe of its own session (dev/ or ctl/)   (QoS 0)
    ea/v1/<fleet>/deploy/<name>         retained Manifest, stable channel (empty = undeployed)
    ea/v1/<fleet>/canary/<name>         retained Manifest of a version under canary test (empty = none)
    ea/v1/<fleet>/rollout/<name>        retained rollout record: history, gates, why it rolled back
    ea/v1/<fleet>/fresh                 retained Freshness: signed, short-lived list of current versions
    ea/v1/<fleet>/stream/<name>         retained StreamSpec, signed like a manifest (stopped = tombstone)
    ea/v1/<fleet>/dev/<id>/streams      retained StreamReport: stats of the streams this device ingests
    ea/v1/<fleet>/dev/<id>/out/<from>   InferResult of a stream frame, for the ingress device     (QoS 1)
    ea/v1/<fleet>/src/<id>/<source>     frames of a source hosted by device <id> (StreamFrame)    (QoS 0)
    ea/v1/<fleet>/src/_out/...          stream results a stream may sink to (another stream's source)

``<from>`` is the writer's own id: the broker's ACL lets each identity write inboxes only under its own
name (``%u``), so a receiver knows who sent a tensor, a result or a shard chunk without believing the
payload, and accepts it only from the identity it expects (a stage-k tensor from a device of stage k-1,
a result from a device of the deployment, a chunk from the source it asked).

An *endpoint* is the topic prefix of a participant (``ea/v1/<fleet>/dev/<id>`` or ``.../ctl/<id>``);
messages name their reply endpoint, so devices and operators answer each other the same way.
"""

from __future__ import annotations

import re

ROOT = "ea/v1"
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_SEG = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}"
_ENDPOINT = re.compile(rf"^ea/v1/{_SEG}/(dev|ctl)/{_SEG}$")


def is_endpoint(value: object, fleet: str | None = None) -> bool:
    """True for ``ea/v1/<fleet>/dev/<id>`` or ``.../ctl/<id>`` (no wildcards, control characters, empty
    levels): the only thing an agent will publish answers under, whatever a message claims."""
    if not isinstance(value, str) or not _ENDPOINT.match(value):
        return False
    return fleet is None or value.split("/")[2] == fleet


def check_segment(kind: str, value: str) -> str:
    """Validate a fleet/device/model name used as a topic segment (no wildcards, no slashes)."""
    if not isinstance(value, str) or not _SEGMENT.match(value):
        raise ValueError(f"invalid {kind} {value!r}: use 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return value


def check_segment_ok(value: object) -> bool:
    return isinstance(value, str) and bool(_SEGMENT.match(value))


def fleet_root(fleet: str) -> str:
    return f"{ROOT}/{fleet}"


def device_endpoint(fleet: str, device_id: str) -> str:
    return f"{ROOT}/{fleet}/dev/{device_id}"


def client_endpoint(fleet: str, client_id: str) -> str:
    return f"{ROOT}/{fleet}/ctl/{client_id}"


def state(fleet: str, device_id: str) -> str:
    return f"{device_endpoint(fleet, device_id)}/state"


def all_states(fleet: str) -> str:
    return f"{ROOT}/{fleet}/dev/+/state"


def load(fleet: str, device_id: str) -> str:
    return f"{device_endpoint(fleet, device_id)}/load"


def all_loads(fleet: str) -> str:
    return f"{ROOT}/{fleet}/dev/+/load"


CHANNELS = ("stable", "canary")   # a manifest's channel; stable manifests live under deploy/, canaries under canary/
_CHANNEL_DIR = {"stable": "deploy", "canary": "canary"}


def deploy(fleet: str, name: str, channel: str = "stable") -> str:
    """Retained manifest topic of a model on a channel ("stable" -> deploy/, "canary" -> canary/)."""
    return f"{ROOT}/{fleet}/{_CHANNEL_DIR[channel]}/{name}"


def all_deploys(fleet: str, channel: str = "stable") -> str:
    return f"{ROOT}/{fleet}/{_CHANNEL_DIR[channel]}/+"


def parse_deploy(topic: str) -> tuple[str, str] | None:
    """``ea/v1/<fleet>/deploy/<name>`` -> ("stable", name); ``.../canary/<name>`` -> ("canary", name)."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != ROOT:
        return None
    channel = next((c for c, d in _CHANNEL_DIR.items() if d == parts[3]), None)
    return None if channel is None else (channel, parts[4])


def freshness(fleet: str) -> str:
    """Retained, signed freshness statement of the fleet's desired state (see ``messages.Freshness``)."""
    return f"{ROOT}/{fleet}/fresh"


def rollout(fleet: str, name: str) -> str:
    return f"{ROOT}/{fleet}/rollout/{name}"


def all_rollouts(fleet: str) -> str:
    return f"{ROOT}/{fleet}/rollout/+"


def stream(fleet: str, name: str) -> str:
    """Retained stream definition (``StreamSpec``) of stream ``name``."""
    return f"{ROOT}/{fleet}/stream/{name}"


def all_streams(fleet: str) -> str:
    return f"{ROOT}/{fleet}/stream/+"


def parse_stream(topic: str) -> str | None:
    """``ea/v1/<fleet>/stream/<name>`` -> name."""
    parts = topic.split("/")
    return parts[4] if len(parts) == 5 and "/".join(parts[:2]) == ROOT and parts[3] == "stream" else None


def stream_report(fleet: str, device_id: str) -> str:
    return f"{device_endpoint(fleet, device_id)}/streams"


def all_stream_reports(fleet: str) -> str:
    return f"{ROOT}/{fleet}/dev/+/streams"


def sources_root(fleet: str) -> str:
    """Prefix of device-hosted sources (``src/<device>/<name>``) and in-tree stream results (``src/_out/``)."""
    return f"{ROOT}/{fleet}/src"


INBOXES = ("in", "cmd", "blob", "out")


def inbox(endpoint: str, kind: str, sender: str) -> str:
    """Topic on which ``sender`` (its own device or client id) writes to one inbox of ``endpoint``
    (``in``, ``cmd``, ``blob``, ``out``). The broker's ACL lets an identity write only under its own
    id (``%u``), so the receiver learns who wrote a message from the topic, not from the payload."""
    return f"{endpoint}/{kind}/{sender}"


def inbox_filter(endpoint: str, kind: str) -> str:
    """Subscription to one inbox of ``endpoint``, from every sender."""
    return f"{endpoint}/{kind}/+"


def sender_of(topic: str) -> str:
    """The writer of an inbox message (the last topic level, see :func:`inbox`); "" when the topic is not an
    inbox topic or the id is not a valid segment."""
    parts = topic.split("/")
    if len(parts) != 7 or parts[3] not in ("dev", "ctl") or parts[5] not in INBOXES:
        return ""
    return parts[6] if check_segment_ok(parts[6]) else ""


def probe(endpoint: str) -> str:
    """An endpoint's probe of its own session through the broker (written and read by itself only)."""
    return f"{endpoint}/probe"


def last_segment(topic: str) -> str:
    return topic.rsplit("/", 1)[-1]


def publisher_device(topic: str) -> str:
    """The device a ``dev/<id>/state`` or ``dev/<id>/load`` topic belongs to: the only identity the broker's
    ACL lets publish there, so receivers take the identity from the topic, never from the payload."""
    parts = topic.split("/")
    return parts[4] if len(parts) == 6 and parts[3] == "dev" else ""
