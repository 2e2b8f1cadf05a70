"""Exception hierarchy of edge-agent. Every error says which device, model, stage or field it is about."""

from __future__ import annotations


class EdgeAgentError(Exception):
    """Base class of all edge-agent errors."""


class ProtocolError(EdgeAgentError):
    """A message could not be decoded or does not follow the protocol (malformed, oversized, bad tensor)."""


class BrokerError(EdgeAgentError):
    """The MQTT broker could not be reached, started or found."""


class StoreError(EdgeAgentError):
    """A blob in the content-addressed store is missing, corrupt or could not be written."""


class DeployError(EdgeAgentError):
    """A deployment could not be planned, shipped or loaded."""


class ManifestRejected(DeployError):
    """Devices refused a published manifest (signature, expiry, replay...): the deployment did not happen."""


class DeployTimeout(DeployError):
    """A deployment did not converge in time; the message lists each device's progress."""


class UnknownModelError(EdgeAgentError):
    """No deployment of that name is known to the fleet."""


class InvalidInputError(EdgeAgentError):
    """Inputs of an inference request do not match the model (name, dtype, shape)."""


class InferenceError(EdgeAgentError):
    """A request failed on a stage; ``stage`` and ``device`` name where."""

    def __init__(self, message: str, *, stage: int | None = None, device: str | None = None,
                 code: str = "error") -> None:
        super().__init__(message)
        self.stage = stage
        self.device = device
        self.code = code


class StageUnavailableError(InferenceError):
    """A stage's device went offline while a request was in flight."""


class InferenceTimeout(InferenceError):
    """A request did not complete before its deadline."""
