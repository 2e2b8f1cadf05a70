"""The lab: try a fleet on one machine, and the room the tests run in. The daemon never imports it.

- :mod:`.sim`: simulated fleets, a broker and N real agent processes on loopback.
- :mod:`.device`: an emulated slower device (a backend wrapper injected into the agent, not a daemon flag).
- :mod:`.netlab`: hosts in network namespaces with real links, partitions and packet loss (root only).
- :mod:`.netns`: sockets inside a network namespace (shared by netlab and faultproxy).
- :mod:`.faultproxy`: a TCP proxy that adds latency and jitter, stalls or cuts connections.
- :mod:`.demo`: ``edge-agent demo``, a CNN split across 3 simulated devices, checked against ONNX Runtime.
"""
