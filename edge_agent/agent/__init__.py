"""The agent daemon (``edge-agent run``): wiring of handlers, trust, reconciler and stage server.

Imports protocol, transport, cluster, security, and the native core through :mod:`.backend`.
"""

from edge_agent.agent.daemon import Agent, AgentConfig

__all__ = ["Agent", "AgentConfig"]
