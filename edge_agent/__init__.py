"""edge-agent: turn a fleet of heterogeneous edge devices into one ONNX inference pool.

    from edge_agent import Fleet
    fleet = Fleet("mqtt://127.0.0.1:1883")
    fleet.deploy("model.onnx", name="m", stages=3)
    outputs = fleet.infer("m", {"input": array})
"""

from edge_agent._version import __version__
from edge_agent.operator.fleet import Fleet  # noqa: E402
from edge_agent.operator.records import Deployment, DeviceStatus  # noqa: E402
from edge_agent.protocol.errors import (  # noqa: E402
    DeployError,
    DeployTimeout,
    EdgeAgentError,
    InferenceError,
    InferenceTimeout,
    InvalidInputError,
    StageUnavailableError,
    UnknownModelError,
)

__all__ = [
    "DeployError", "DeployTimeout", "Deployment", "DeviceStatus", "EdgeAgentError", "Fleet", "InferenceError",
    "InferenceTimeout", "InvalidInputError", "StageUnavailableError", "UnknownModelError", "__version__",
]
