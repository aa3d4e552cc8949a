"""HostFacts -> Plan: the request, the basis (bandwidth, efficiency, per-device fit), the memory and speed model, the choice."""
