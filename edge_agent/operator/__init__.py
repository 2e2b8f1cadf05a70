"""The operator's Python API: :class:`Fleet` (deploy, infer, status, rollout, rollback), which the CLI wraps.

Imports protocol, transport, cluster, security and :mod:`models` (planning, partitioning).
"""

from edge_agent.operator.fleet import Fleet
from edge_agent.operator.records import Deployment, DeviceStatus

__all__ = ["Deployment", "DeviceStatus", "Fleet"]
