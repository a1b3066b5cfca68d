"""Fleet outputs fed by snapshots: Prometheus metrics and IPFIX flows (one base)."""
