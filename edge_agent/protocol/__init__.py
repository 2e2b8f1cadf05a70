"""The wire: topics, typed messages and manifests, and the errors every room raises.

Imports nothing else of edge_agent; every other room imports it.
"""
