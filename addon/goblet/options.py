"""Goblet's mitmproxy options and the pure functions that validate them.

Every option is declared ``str`` or ``Sequence[str]`` and parsed here: a value
mitmproxy itself fails to convert (say ``--set goblet_verdict_ttl=soon`` on an
``int`` option) is dropped silently while the addon loads, so goblet does the
conversion and refuses bad values loudly.

Each parser takes the raw option value and returns the parsed value or
raises ValueError with a message that names the problem; the addon turns that
into ``OptionsError`` so a bad ``--set`` stops start-up (exit status 1).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from goblet.fleet.locations import (
    RedisLocation,
    StoreLocation,
    parse_endpoint,
    parse_partitions,
    parse_redis,
    parse_store,
)

DEFAULT_HOSTS = ("github.com", "gitlab.com", "bitbucket.org")

_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")
_IPV4 = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """One option: name, type, default, a one-line help, and whether a change of it
    needs a restart (``restart``; every other option applies at run time)."""

    name: str
    typespec: Any
    default: Any
    help: str
    restart: bool = False

    @property
    def field(self) -> str:
        """The Settings field this option fills."""
        return self.name.removeprefix("goblet_")


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("goblet_cache_dir", str, "cache",
               "Directory of the bare-repo cache (created if missing). Needs a restart.",
               restart=True),
    OptionSpec("goblet_hosts", Sequence[str], list(DEFAULT_HOSTS),
               "Hosts (host or host:port) whose git traffic is intercepted and cached; "
               "other hosts are relayed without TLS interception."),
    OptionSpec("goblet_verdict_ttl", str, "60s",
               "How long an upstream grant lets the same credential read the cache "
               "(e.g. 60, 60s, 5m; 0 disables cache reads)."),
    OptionSpec("goblet_refs_ttl", str, "0",
               "Answer info/refs and ls-refs from the cache while the refs the upstream last "
               "listed to the same credential are younger than this and its grant is fresh "
               "(goblet_verdict_ttl); 0: always ask the upstream (e.g. 30s, 5m)."),
    OptionSpec("goblet_webhook_secret_file", str, "",
               "File holding the shared secret of push webhooks on goblet_metrics_port "
               "(GitHub: HMAC key; GitLab: token); read at each webhook. Empty: webhooks off."),
    OptionSpec("goblet_upstream_timeout", str, "60s",
               "How long a fill from upstream may make no progress before it is abandoned "
               "(a cold clone's streamed fill: its client taking less than 1000 bytes/s)."),
    OptionSpec("goblet_instance", str, "",
               "Name of this instance in logs and X-Served-By (default: the host name)."),
    OptionSpec("goblet_max_request_bytes", str, "64MiB",
               "Largest upload-pack request body inspected, counted after decoding; larger "
               "ones pass through uncached."),
    OptionSpec("goblet_request_body_timeout", str, "60s",
               "How long a client may take to send an upload-pack request body goblet "
               "inspects; slower clients are disconnected."),
    OptionSpec("goblet_min_free_bytes", str, "1GiB",
               "Free disk below which the instance reports not ready (e.g. 512MiB, 10GiB)."),
    OptionSpec("goblet_metrics_port", str, "0",
               "Also serve /metrics, /healthz and /readyz on this port (0: only on the "
               "proxy port). Needs a restart.", restart=True),
    OptionSpec("goblet_metrics_host", str, "",
               "Address for goblet_metrics_port (default: mitmproxy's listen_host). Needs a "
               "restart.", restart=True),
    OptionSpec("goblet_prefix_port", str, "0",
               "Also listen on this port for path-prefix requests, http://goblet:PORT/<host>/"
               "<repo> (plain HTTP from the client; upstream always over https). 0: off. "
               "Needs a restart.", restart=True),
    OptionSpec("goblet_cache_max_bytes", str, "0",
               "Budget of the cache (repos, stored packs and LFS objects); least recently used "
               "repos and LFS objects are evicted above it (e.g. 50GiB; 0: no byte budget, "
               "only goblet_min_free_bytes)."),
    OptionSpec("goblet_pack_cache_max_bytes", str, "2GiB",
               "Budget of stored upload-pack answers shared by identical fetches (0: off)."),
    OptionSpec("goblet_maintenance", str, "on",
               "on: repack (geometric after fills, full every goblet_full_repack_interval) "
               "with bitmaps and commit-graphs; off: never."),
    OptionSpec("goblet_full_repack_interval", str, "7d",
               "How often each repo gets a full repack, which drops objects upstream deleted."),
    OptionSpec("goblet_repack_threads", str, "1",
               "pack.threads for maintenance repacks (keep low: serving needs the cores)."),
    OptionSpec("goblet_warm_repos", str, "",
               "File of repo URLs (one per line) to keep warm: filled at start-up and every "
               "goblet_warm_interval."),
    OptionSpec("goblet_warm_interval", str, "10m", "How often goblet_warm_repos are refreshed."),
    OptionSpec("goblet_warm_credentials", str, "",
               "File of header lines (e.g. 'Authorization: Bearer …') used by warming fills; "
               "read at each round, never logged. Default: the GOBLET_WARM_HEADER env var."),
    OptionSpec("goblet_isolation", str, "shared",
               "How tenants share the cache: shared (one object store per upstream repo, "
               "every read verified upstream), tenant (separate repos per credential), user "
               "(per user name), public (only anonymously readable repos are cached)."),
    OptionSpec("goblet_max_partitions", str, "16",
               "In tenant and user isolation: most cache copies (partitions) of one upstream "
               "repo; the least recently used beyond it are evicted (0: no limit)."),
    OptionSpec("goblet_negative_ttl", str, "60s",
               "How long an upstream refusal is remembered (it always revokes a grant at once)."),
    OptionSpec("goblet_offline", str, "off",
               "on: when the upstream is unreachable (network error, timeout, 5xx) answer "
               "credentials it granted within goblet_offline_grace from the cache."),
    OptionSpec("goblet_offline_grace", str, "24h",
               "How old a grant may be for offline answers (e.g. 30m, 24h)."),
    OptionSpec("goblet_allow_open_proxy", str, "off",
               "on: start even though the proxy listens beyond loopback with no proxyauth "
               "(anyone who reaches the port can relay through it); off: refuse to start."),
    OptionSpec("goblet_cold_clones", str, "stream",
               "stream: a full clone of a repo not cached yet gets the upstream's answer as it "
               "arrives, which also fills the cache; fill: fill the cache first, then serve "
               "(the client waits for the whole fill, upstream failures become git errors)."),
    OptionSpec("goblet_lfs", str, "on",
               "on: Git LFS downloads upstream grants are served through goblet links from "
               "the LFS store (filled on first use, verified against the oid); off: LFS "
               "passes through untouched."),
    OptionSpec("goblet_lfs_link_ttl", str, "2m",
               "How long a goblet LFS link stays valid after the upstream granted the download "
               "(e.g. 60s, 2m)."),
    OptionSpec("goblet_relay_internal", str, "off",
               "on: also relay clients to loopback and link-local addresses (127.0.0.0/8, "
               "::1, 169.254.0.0/16 with cloud metadata services, fe80::/10) that are not "
               "goblet_hosts; off: refuse them."),
    OptionSpec("goblet_store", str, "",
               "Shared object-store tier, s3://bucket/prefix (empty: off). Credentials come "
               "from the standard AWS chain (environment, profile, instance role) only. "
               "Needs a restart.", restart=True),
    OptionSpec("goblet_store_endpoint", str, "",
               "Endpoint of an S3-compatible server for goblet_store, http(s)://host:port "
               "(empty: AWS S3). Needs a restart.", restart=True),
    OptionSpec("goblet_store_max_bytes", str, "0",
               "Budget of the object store; least recently published repos are removed above "
               "it (0: no budget)."),
    OptionSpec("goblet_store_partitions", str, "shared",
               "Partition kinds published to the store, comma-separated: shared, tenant, user "
               "(tenant and user partitions need the same tenant secret on every instance)."),
    OptionSpec("goblet_redis", str, "",
               "Redis for fleet coordination, redis://host:port/db (empty: off): one fill per "
               "repo across the fleet. Password from GOBLET_REDIS_PASSWORD. Needs a restart.",
               restart=True),
    OptionSpec("goblet_fleet_lease", str, "30s",
               "How long a fleet fill lease lasts without renewal (a crashed leader's runs "
               "out after this). Needs a restart.", restart=True),
    OptionSpec("goblet_fast_dispatch", str, "on",
               "on: mitmproxy's hook events reach its addons through goblet's one-loop "
               "dispatch (mitmproxy 11's order and error handling, a fraction of its CPU); "
               "off: through mitmproxy's own."),
    OptionSpec("goblet_log_format", str, "text",
               "Access log format: text (mitmproxy's log) or json (one object per line "
               "on stderr)."),
)


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated values of every goblet option."""

    cache_dir: Path
    hosts: frozenset[tuple[str, int]]
    verdict_ttl: int
    upstream_timeout: int
    instance: str
    max_request_bytes: int
    min_free_bytes: int
    metrics_port: int
    metrics_host: str
    log_format: str
    prefix_port: int = 0
    cache_max_bytes: int = 0
    pack_cache_max_bytes: int = 2 * 1024**3
    maintenance: bool = True
    full_repack_interval: int = 7 * 86400
    repack_threads: int = 1
    warm_repos: Path | None = None
    warm_interval: int = 600
    warm_credentials: Path | None = None
    isolation: str = "shared"
    negative_ttl: int = 60
    offline: bool = False
    offline_grace: int = 86400
    request_body_timeout: int = 60
    max_partitions: int = 16
    allow_open_proxy: bool = False
    relay_internal: bool = False
    cold_clones: str = "stream"
    store: StoreLocation | None = None
    store_endpoint: str | None = None
    store_max_bytes: int = 0
    store_partitions: frozenset[str] = frozenset({"shared"})
    redis: RedisLocation | None = None
    fleet_lease: int = 30
    refs_ttl: int = 0
    webhook_secret_file: Path | None = None
    lfs: bool = True
    lfs_link_ttl: int = 120
    fast_dispatch: bool = True


ISOLATION_MODES = ("shared", "tenant", "user", "public")


def mitmproxy_updates_for(settings: Settings, o: Any) -> dict[str, Any]:
    """``mitmproxy_updates`` for a mitmproxy options object ``o``."""
    limit = str(getattr(o, "stream_large_bodies", "") or "").strip().lower()
    units = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
    m = re.fullmatch(r"([0-9]+)([kmg]?)b?", limit)
    return mitmproxy_updates(settings, mode=getattr(o, "mode", []),
                             stream_large_bodies=int(m.group(1)) * units[m.group(2)] if m
                             else None,
                             connection_strategy=getattr(o, "connection_strategy", "lazy"))


def mitmproxy_updates(settings: Settings, *, mode: Sequence[str], stream_large_bodies: int | None,
                      connection_strategy: str) -> dict[str, Any]:
    """The mitmproxy options goblet's settings need changed (given their current values).

    - ``mode``: the path-prefix listener, ``regular@<goblet_prefix_port>``;
    - ``stream_large_bodies``: at most ``goblet_max_request_bytes``, so mitmproxy
      buffers no more of a body goblet reads than goblet would inspect (bigger
      bodies are streamed: they pass through uninspected);
    - ``connection_strategy=lazy`` in offline mode: an eager CONNECT fails outright
      while the upstream is down, before goblet sees a request it could answer.
    """
    updates: dict[str, Any] = {}
    if settings.prefix_port and (prefix := f"regular@{settings.prefix_port}") not in mode:
        updates["mode"] = [*mode, prefix]
    if stream_large_bodies is None or stream_large_bodies > settings.max_request_bytes:
        updates["stream_large_bodies"] = str(settings.max_request_bytes)
    if settings.offline and connection_strategy != "lazy":
        updates["connection_strategy"] = "lazy"
    return updates


def reparse(current: Settings | None, o: Any) -> Settings:
    """The settings from options ``o``, as a change from ``current`` (None at start-up).

    Raises ValueError for a bad value or a change of an option that needs a restart.
    """
    settings = parse_settings(o)
    if current is not None and (frozen := needing_restart(current, settings)):
        raise ValueError(f"{', '.join(frozen)} cannot change at run time (restart goblet)")
    return settings


def needing_restart(old: Settings, new: Settings) -> list[str]:
    """The options whose change from ``old`` to ``new`` cannot apply at run time."""
    return [spec.name for spec in OPTIONS
            if spec.restart and getattr(old, spec.field) != getattr(new, spec.field)]


_TRUE = ("on", "true", "yes", "1")
_FALSE = ("off", "false", "no", "0")


def parse_bool(name: str, value: str) -> bool:
    """A switch, spelled as mitmproxy's own booleans are (true/false) or on/off, yes/no, 1/0."""
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{name} must be true or false (or on/off), not {value!r}")


def parse_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices`` (case-insensitive), else ValueError."""
    text = str(value).strip().lower()
    if text not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return text


def parse_settings(o: Any) -> Settings:
    """Validate the ``goblet_*`` attributes of an options object; ValueError if bad."""
    port_text = str(o.goblet_metrics_port).strip()
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or int(port_text) > 65535:
        raise ValueError(f"goblet_metrics_port must be 0-65535, not {o.goblet_metrics_port!r}")
    prefix_text = str(o.goblet_prefix_port).strip()
    if not re.fullmatch(r"[0-9]{1,5}", prefix_text) or int(prefix_text) > 65535:
        raise ValueError(f"goblet_prefix_port must be 0-65535, not {o.goblet_prefix_port!r}")
    if o.goblet_log_format not in ("text", "json"):
        raise ValueError(f"goblet_log_format must be text or json, not {o.goblet_log_format!r}")
    return check_budgets(Settings(
        cache_dir=parse_cache_dir(o.goblet_cache_dir),
        hosts=parse_hosts(o.goblet_hosts),
        verdict_ttl=parse_seconds("goblet_verdict_ttl", o.goblet_verdict_ttl, 0, 3600),
        upstream_timeout=parse_seconds("goblet_upstream_timeout", o.goblet_upstream_timeout),
        instance=parse_instance(o.goblet_instance),
        max_request_bytes=parse_size("goblet_max_request_bytes", o.goblet_max_request_bytes),
        min_free_bytes=parse_size("goblet_min_free_bytes", o.goblet_min_free_bytes, 0),
        metrics_port=int(port_text),
        prefix_port=int(prefix_text),
        metrics_host=o.goblet_metrics_host.strip(),
        log_format=o.goblet_log_format,
        isolation=parse_choice("goblet_isolation", o.goblet_isolation, ISOLATION_MODES),
        negative_ttl=parse_seconds("goblet_negative_ttl", o.goblet_negative_ttl, 0, 86400),
        offline=parse_bool("goblet_offline", o.goblet_offline),
        offline_grace=parse_seconds("goblet_offline_grace", o.goblet_offline_grace, 1,
                                    30 * 86400),
        cache_max_bytes=parse_size("goblet_cache_max_bytes", o.goblet_cache_max_bytes, 0),
        pack_cache_max_bytes=parse_size("goblet_pack_cache_max_bytes",
                                        o.goblet_pack_cache_max_bytes, 0),
        maintenance=parse_bool("goblet_maintenance", o.goblet_maintenance),
        request_body_timeout=parse_seconds("goblet_request_body_timeout",
                                           o.goblet_request_body_timeout, 1, 3600),
        max_partitions=parse_int("goblet_max_partitions", o.goblet_max_partitions, 0, 100000),
        allow_open_proxy=parse_bool("goblet_allow_open_proxy", o.goblet_allow_open_proxy),
        relay_internal=parse_bool("goblet_relay_internal", o.goblet_relay_internal),
        cold_clones=parse_choice("goblet_cold_clones", o.goblet_cold_clones, ("stream", "fill")),
        lfs=parse_bool("goblet_lfs", o.goblet_lfs),
        lfs_link_ttl=parse_seconds("goblet_lfs_link_ttl", o.goblet_lfs_link_ttl, 1, 3600),
        fast_dispatch=parse_bool("goblet_fast_dispatch", o.goblet_fast_dispatch),
        full_repack_interval=parse_seconds("goblet_full_repack_interval",
                                           o.goblet_full_repack_interval, 60, 365 * 86400),
        repack_threads=parse_int("goblet_repack_threads", o.goblet_repack_threads, 1, 64),
        warm_repos=_optional_file("goblet_warm_repos", o.goblet_warm_repos),
        warm_interval=parse_seconds("goblet_warm_interval", o.goblet_warm_interval, 10, 86400),
        warm_credentials=_optional_file("goblet_warm_credentials", o.goblet_warm_credentials),
        store=parse_store(o.goblet_store),
        store_endpoint=parse_endpoint(o.goblet_store_endpoint),
        store_max_bytes=parse_size("goblet_store_max_bytes", o.goblet_store_max_bytes, 0),
        store_partitions=parse_partitions(o.goblet_store_partitions),
        redis=parse_redis(o.goblet_redis),
        fleet_lease=parse_seconds("goblet_fleet_lease", o.goblet_fleet_lease, 2, 3600),
        refs_ttl=parse_seconds("goblet_refs_ttl", o.goblet_refs_ttl, 0, 86400),
        webhook_secret_file=_optional_file("goblet_webhook_secret_file",
                                           o.goblet_webhook_secret_file),
    ))


def check_budgets(settings: Settings) -> Settings:
    """Fit the pack-cache budget inside the cache budget.

    Stored answers count toward ``goblet_cache_max_bytes`` but eviction only
    removes repos, so a pack cache as large as the whole budget could only be
    met by evicting every repo: it is capped at half the budget.
    """
    cap = settings.cache_max_bytes // 2
    if settings.cache_max_bytes and settings.pack_cache_max_bytes > cap:
        return replace(settings, pack_cache_max_bytes=cap)
    return settings


def parse_int(name: str, value: str, minimum: int, maximum: int) -> int:
    """A whole number within [minimum, maximum]."""
    text = str(value).strip()
    if not re.fullmatch(r"[0-9]{1,9}", text) or not minimum <= int(text) <= maximum:
        raise ValueError(f"{name} must be a whole number from {minimum} to {maximum}, "
                         f"not {value!r}")
    return int(text)


def _optional_file(name: str, value: str) -> Path | None:
    """An existing file, or None for an empty value."""
    if not str(value).strip():
        return None
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"{name}: {value!r} is not a file")
    return path


def parse_host(value: str) -> tuple[str, int]:
    """``host`` or ``host:port`` (``[v6]:port`` too) → (lower-case host, port)."""
    text = value.strip()
    if not text:
        raise ValueError("empty host")
    port = 443
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"unbalanced brackets in host {value!r}")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad host {value!r}")
            port = _parse_port(rest[1:], value)
        try:
            socket.inet_pton(socket.AF_INET6, host)
        except OSError:
            raise ValueError(f"bad IPv6 address in {value!r}") from None
        return host.lower(), port
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host = text
    else:
        port = _parse_port(port_text, value)
    if not (_HOSTNAME.fullmatch(host) or _IPV4.fullmatch(host)):
        raise ValueError(f"bad host name {value!r}")
    return host.rstrip(".").lower(), port


def _parse_port(text: str, whole: str) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", text) or not 0 < int(text) < 65536:
        raise ValueError(f"bad port in {whole!r}")
    return int(text)


def parse_hosts(values: Sequence[str]) -> frozenset[tuple[str, int]]:
    """Parse ``goblet_hosts``; a value may also hold several comma-separated hosts."""
    hosts: set[tuple[str, int]] = set()
    for value in values:
        for part in value.split(","):
            if part.strip():
                hosts.add(parse_host(part))
    if not hosts:
        raise ValueError("goblet_hosts is empty: nothing would be cached")
    return frozenset(hosts)


_DURATION = re.compile(r"([0-9]+) ?(s|m|h|d)?")
_SIZE = re.compile(r"([0-9]+) ?(|B|KiB|MiB|GiB|TiB|K|M|G|T)")
_UNITS = {"": 1, "B": 1, "K": 1024, "KiB": 1024, "M": 1024**2, "MiB": 1024**2,
          "G": 1024**3, "GiB": 1024**3, "T": 1024**4, "TiB": 1024**4}


def parse_seconds(name: str, value: str, minimum: int = 1, maximum: int = 86400) -> int:
    """A duration (``90``, ``90s``, ``5m``, ``1h``) as whole seconds in [minimum, maximum]."""
    m = _DURATION.fullmatch(str(value).strip())
    if not m:
        raise ValueError(f"{name} must be a duration such as 60, 60s, 5m or 1h, not {value!r}")
    seconds = int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}[m.group(2)]
    if not minimum <= seconds <= maximum:
        raise ValueError(
            f"{name} must be between {minimum} and {maximum} seconds, not {value!r}"
        )
    return seconds


def parse_size(name: str, value: str, minimum: int = 1) -> int:
    """A byte size (``1048576``, ``512KiB``, ``64MiB``, ``10G``) of at least ``minimum``."""
    m = _SIZE.fullmatch(str(value).strip())
    if not m:
        raise ValueError(f"{name} must be a size such as 65536, 512KiB or 64MiB, not {value!r}")
    size = int(m.group(1)) * _UNITS[m.group(2)]
    if size < minimum:
        raise ValueError(f"{name} must be at least {minimum} bytes, not {value!r}")
    return size


def parse_cache_dir(value: str) -> Path:
    """The cache directory as an absolute path (it need not exist yet)."""
    if not value.strip():
        raise ValueError("goblet_cache_dir is empty")
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"goblet_cache_dir {value!r} exists and is not a directory")
    return path.resolve()


def parse_instance(value: str) -> str:
    """An instance name safe for a header value and a log field."""
    name = value.strip() or socket.gethostname()
    if not re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", name):
        raise ValueError(f"goblet_instance {value!r} must be 1-64 of [A-Za-z0-9._:-]")
    return name
