"""Moving bytes: the MQTT client (one per process), the broker runners, the content-addressed store and the
chunked, resumable blob transfer between peers.

Imports only :mod:`edge_agent.protocol`.
"""
