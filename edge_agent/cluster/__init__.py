"""The fleet as seen from any participant: a :class:`FleetView` of device states and loads, and the pure
decisions taken on it (which replica serves a request, which device adopts an orphaned stage, how replicas
are placed). Shared by the agent and the operator; no I/O.

Imports only :mod:`edge_agent.protocol`.
"""
