"""The local fleet's shape and its generated configs, with no IO but reading templates.

``loadtest/run-local`` starts what this module describes; the tests render the
same configs and hand them to ``haproxy -c`` and ``promtool check config``.

Two topologies (docs/operations/scaling.md says when to use which):

- ``sharded``: N goblets with separate cache dirs behind HAProxy in HTTP mode,
  hashing ``/<host>/<repo>`` onto their path-prefix ports (``hash-type
  consistent``). Each repo lives on one instance.
- ``shared``: N goblets on one host sharing one cache dir; HAProxy in TCP mode
  spreads forward-proxy (CONNECT) clients over their proxy ports, and the same
  hashing HTTP frontend serves path-prefix clients. Fills are serialised across
  the processes by goblet's ``flock``.
"""

from __future__ import annotations

import re
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
HAPROXY_DIR = REPO_ROOT / "loadtest" / "haproxy"
PROMETHEUS_DIR = REPO_ROOT / "loadtest" / "prometheus"
TOPOLOGIES = ("sharded", "shared")
COMPOSE_INSTANCES = 3
COMPOSE_PREFIX_PORT = 8081
COMPOSE_METRICS_PORT = 9464
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
# loadtest/demo-upstream's defaults: the upstream a bare run-local and loadtest.py use.
DEMO_UPSTREAM = "127.0.0.1:8443"
DEMO_CERT = Path("/tmp/goblet-demo-upstream/certs/upstream-cert.pem")


@dataclass(frozen=True)
class Instance:
    """One goblet process of the fleet: its name, ports and cache dir."""

    name: str
    host: str
    proxy_port: int
    prefix_port: int
    metrics_port: int
    cache_dir: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (for topology.json)."""
        return asdict(self)


def render(template: str, values: dict[str, str]) -> str:
    """Fill ``{{name}}`` placeholders; KeyError names one without a value."""
    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"template placeholder {{{{{name}}}}} has no value")
        return values[name]

    return _PLACEHOLDER.sub(fill, template)


def template(topology: str) -> str:
    """The HAProxy template text of ``topology``."""
    if topology not in TOPOLOGIES:
        raise ValueError(f"topology must be one of {', '.join(TOPOLOGIES)}, not {topology!r}")
    return (HAPROXY_DIR / f"{topology}.cfg").read_text(encoding="utf-8")


def _servers(instances: list[Instance], port: str) -> str:
    """HAProxy server lines for ``instances`` on their ``port`` (an Instance field), each
    health-checked on its metrics port (which answers whatever proxyauth says)."""
    return "\n".join(f"    server {i.name} {i.host}:{getattr(i, port)} check port {i.metrics_port}"
                     for i in instances)


def haproxy_config(topology: str, instances: list[Instance], *, http_bind: str,
                   stats_bind: str, connect_bind: str = "", dns: str = "") -> str:
    """The HAProxy config for ``instances``.

    ``dns`` (sharded only): a resolver (``host:port``) to re-resolve server names
    at run time, as containers change addresses when they restart.
    """
    values = {
        "http_bind": http_bind,
        "stats_bind": stats_bind,
        "server_options": " resolvers dns init-addr last,libc,none" if dns else "",
        "resolvers": (f"\nresolvers dns\n    nameserver dns {dns}\n    hold valid 10s"
                      if dns else ""),
        "prefix_servers": _servers(instances, "prefix_port"),
    }
    if topology == "shared":
        if not connect_bind:
            raise ValueError("the shared topology needs a CONNECT frontend address")
        values["connect_bind"] = connect_bind
        values["proxy_servers"] = _servers(instances, "proxy_port")
    return render(template(topology), values)


def compose_haproxy_config() -> str:
    """The sharded config for docker compose (service names goblet-1..3, Docker's DNS)."""
    instances = [Instance(f"goblet-{n}", f"goblet-{n}", 8080, COMPOSE_PREFIX_PORT,
                          COMPOSE_METRICS_PORT, "/var/cache/goblet")
                 for n in range(1, COMPOSE_INSTANCES + 1)]
    header = ("# GENERATED from sharded.cfg for loadtest/docker-compose.loadtest.yml by\n"
              "#   python3 -m loadtest.topology > loadtest/haproxy/compose.cfg\n"
              "# (tests/e2e/test_loadtest_kit.py fails when the two drift apart).\n")
    return header + haproxy_config("sharded", instances, http_bind=":8080",
                                   stats_bind=":8404", dns="127.0.0.11:53")


def prometheus_config(instances: list[Instance], *, haproxy_stats: str, rules: str,
                      scrape_interval: str = "5s") -> dict[str, Any]:
    """A Prometheus config (a dict; JSON is YAML) scraping every goblet and HAProxy.

    The job is ``goblet`` (the alert rules select it) and each target's
    ``instance`` label is the goblet instance name, as in X-Served-By.
    """
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [rules],
        "scrape_configs": [
            {"job_name": "goblet", "metrics_path": "/metrics",
             "static_configs": [{"targets": [f"{i.host}:{i.metrics_port}"],
                                 "labels": {"instance": i.name}} for i in instances]},
            {"job_name": "haproxy", "metrics_path": "/metrics",
             "static_configs": [{"targets": [haproxy_stats]}]},
        ],
    }


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that was free a moment ago."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def port_is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound right now."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


if __name__ == "__main__":
    print(compose_haproxy_config(), end="")
