"""The operator's Python API: :class:`Fleet` (deploy, infer, status, rollout, rollback), which the CLI wraps.

Imports protocol, transport, cluster, security and :mod:`models` (planning, partitioning).
"""

from edge_agent.operator.fleet import Deployment, DeviceStatus, Fleet

__all__ = ["Deployment", "DeviceStatus", "Fleet"]
