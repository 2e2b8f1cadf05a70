"""Trust: fleet signing keys and signed documents, the manifest gate (signature, fleet, expiry, version
ledger) shared by agents and operators, and the fleet PKI (CA, device certificates, broker ACLs).

Imports only :mod:`edge_agent.protocol`.
"""
