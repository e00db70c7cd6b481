"""The daemon and what it serves: /healthz, /metrics, logs."""
