"""Offline mode: knowing when the upstream is unreachable, and asking it ourselves."""
