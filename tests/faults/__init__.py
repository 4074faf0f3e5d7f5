"""Fault injection, end to end on loopback (issue 7): relay, agent, sender and endpoint
faults under load, bytes checked at both ends; tokens and key rotation; a short soak.

Longer local runs: ``HCM_FAULT_SINK_SECONDS`` (endpoint that never reads, default 8),
``HCM_FAULT_TOKEN_SECONDS`` (agent token lifetime, default 60; 300 for the 5-minute run),
``HCM_SOAK_SECONDS`` / ``HCM_SOAK_RATE`` (default 60 s at 30 connections/s); the 30-minute
soak is ``bench/soak.py``.
"""
