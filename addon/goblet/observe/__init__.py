"""Observability: health and readiness, the HTTP endpoints, metrics recording, access logs."""
