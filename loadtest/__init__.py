"""Goblet's load-test and local-topology kit (see loadtest/README.md)."""
