"""Option parsers: pure functions that return the parsed value or raise ValueError."""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path

import pytest
from goblet import options
from goblet.options import (
    DEFAULT_HOSTS,
    OPTIONS,
    parse_cache_dir,
    parse_host,
    parse_hosts,
    parse_instance,
    parse_seconds,
    parse_size,
)
from hypothesis import given, settings
from hypothesis import strategies as st


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("github.com", ("github.com", 443), id="host"),
        pytest.param("GitHub.COM", ("github.com", 443), id="lower-cased"),
        pytest.param("  gitlab.com  ", ("gitlab.com", 443), id="stripped"),
        pytest.param("github.com.", ("github.com", 443), id="trailing-dot"),
        pytest.param("git.example.com:8443", ("git.example.com", 8443), id="port"),
        pytest.param("localhost:1", ("localhost", 1), id="port-1"),
        pytest.param("localhost:65535", ("localhost", 65535), id="port-65535"),
        pytest.param("localhost:0443", ("localhost", 443), id="port-leading-zero"),
        pytest.param("a", ("a", 443), id="one-char"),
        pytest.param("x-y.z", ("x-y.z", 443), id="hyphen"),
        pytest.param("127.0.0.1", ("127.0.0.1", 443), id="ipv4"),
        pytest.param("127.0.0.1:9443", ("127.0.0.1", 9443), id="ipv4-port"),
        pytest.param("[::1]", ("::1", 443), id="ipv6"),
        pytest.param("[::1]:8443", ("::1", 8443), id="ipv6-port"),
        pytest.param("[FE80::A]", ("fe80::a", 443), id="ipv6-lower-cased"),
        pytest.param("a" * 63 + ".com", ("a" * 63 + ".com", 443), id="63-char-label"),
        pytest.param(".".join(["a" * 63] * 3) + "." + "a" * 61,
                     (".".join(["a" * 63] * 3) + "." + "a" * 61, 443), id="253-char-name"),
    ],
)
def test_parse_host(value: str, expected: tuple[str, int]) -> None:
    assert parse_host(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("", "empty host", id="empty"),
        pytest.param("   ", "empty host", id="blank"),
        pytest.param("github.com:", "bad port", id="empty-port"),
        pytest.param("github.com:0", "bad port", id="port-0"),
        pytest.param("github.com:65536", "bad port", id="port-65536"),
        pytest.param("github.com:-1", "bad port", id="negative-port"),
        pytest.param("github.com:+443", "bad port", id="signed-port"),
        pytest.param("github.com:44 3", "bad port", id="space-in-port"),
        pytest.param("github.com:https", "bad port", id="named-port"),
        pytest.param("https://github.com", "bad", id="url"),
        pytest.param("github.com/org", "bad host name", id="path"),
        pytest.param("user@github.com", "bad host name", id="userinfo"),
        pytest.param("-github.com", "bad host name", id="leading-hyphen"),
        pytest.param("github-.com", "bad host name", id="trailing-hyphen"),
        pytest.param("git_hub.com", "bad host name", id="underscore"),
        pytest.param("github..com", "bad host name", id="empty-label"),
        pytest.param(".github.com", "bad host name", id="leading-dot"),
        pytest.param("a" * 65 + ".com", "bad host name", id="65-char-label"),
        pytest.param(".".join(["a" * 63] * 3) + "." + "a" * 62, "bad host name",
                     id="254-char-name"),
        pytest.param("gith\u00fcb.com", "bad host name", id="non-ascii"),
        pytest.param("git\nhub.com", "bad host name", id="inner-lf"),
        pytest.param("::1", "bad", id="ipv6-without-brackets"),
        pytest.param("[::1", "unbalanced brackets", id="unbalanced"),
        pytest.param("[::1]x", "bad host", id="junk-after-bracket"),
        pytest.param("[::1]:", "bad port", id="ipv6-empty-port"),
        pytest.param("[::1]:70000", "bad port", id="ipv6-big-port"),
        pytest.param("[github.com]", "bad IPv6 address", id="name-in-brackets"),
        pytest.param("[fe80::1%eth0]", "bad IPv6 address", id="zone-id"),
        pytest.param("[]", "bad IPv6 address", id="empty-brackets"),
    ],
)
def test_parse_host_rejects(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_host(value)


def test_parse_host_rejects_a_64_char_label() -> None:
    with pytest.raises(ValueError, match="bad host name"):
        parse_host("a" * 64 + ".com")


@pytest.mark.parametrize("port", ["\u00b9", "\u0664\u0664\u0663"],
                         ids=["superscript-1", "arabic-443"])
def test_parse_host_rejects_non_ascii_port_digits(port: str) -> None:
    with pytest.raises(ValueError, match="bad port"):
        parse_host("github.com:" + port)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param(list(DEFAULT_HOSTS),
                     {("github.com", 443), ("gitlab.com", 443), ("bitbucket.org", 443)},
                     id="defaults"),
        pytest.param(["github.com,gitlab.com:8443"],
                     {("github.com", 443), ("gitlab.com", 8443)}, id="comma-separated"),
        pytest.param(["github.com", "GITHUB.com", "github.com:443"], {("github.com", 443)},
                     id="duplicates-merge"),
        pytest.param(["github.com:443", "github.com:8443"],
                     {("github.com", 443), ("github.com", 8443)}, id="ports-differ"),
        pytest.param([" github.com , , gitlab.com ,"],
                     {("github.com", 443), ("gitlab.com", 443)}, id="blank-parts-skipped"),
        pytest.param(["[::1]:8443,localhost"], {("::1", 8443), ("localhost", 443)}, id="ipv6"),
    ],
)
def test_parse_hosts(values: list[str], expected: set[tuple[str, int]]) -> None:
    assert parse_hosts(values) == frozenset(expected)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param([], "is empty", id="no-values"),
        pytest.param([""], "is empty", id="empty-string"),
        pytest.param([" , ,"], "is empty", id="only-commas"),
        pytest.param(["github.com", "bad host"], "bad host name", id="one-bad"),
        pytest.param(["github.com,:443"], "bad host name", id="port-only"),
    ],
)
def test_parse_hosts_rejects(values: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_hosts(values)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param("60", 60, id="bare-number"),
        pytest.param("60s", 60, id="seconds"),
        pytest.param("5m", 300, id="minutes"),
        pytest.param("1h", 3600, id="hour"),
        pytest.param(" 90 s ", 90, id="spaces"),
        pytest.param("0090", 90, id="leading-zeros"),
        pytest.param("24h", 86400, id="maximum-as-hours"),
        pytest.param("1440m", 86400, id="maximum-as-minutes"),
        pytest.param("1d", 86400, id="maximum-as-days"),
        pytest.param(120, 120, id="int-from-an-old-config"),
    ],
)
def test_parse_seconds(value: str, seconds: int) -> None:
    assert parse_seconds("goblet_x", value) == seconds


@pytest.mark.parametrize(
    ("value", "minimum", "maximum", "ok"),
    [
        pytest.param("1", 1, 86400, True, id="minimum"),
        pytest.param("0", 1, 86400, False, id="below-minimum"),
        pytest.param("86400", 1, 86400, True, id="maximum"),
        pytest.param("86401", 1, 86400, False, id="above-maximum"),
        pytest.param("1441m", 1, 86400, False, id="above-maximum-in-minutes"),
        pytest.param("25h", 1, 86400, False, id="above-maximum-in-hours"),
        pytest.param("0", 0, 86400, True, id="zero-allowed-when-minimum-0"),
        pytest.param("0s", 0, 86400, True, id="zero-seconds"),
        pytest.param("60", 60, 60, True, id="single-value-range"),
        pytest.param("59", 60, 60, False, id="single-value-range-below"),
    ],
)
def test_parse_seconds_bounds(value: str, minimum: int, maximum: int, ok: bool) -> None:
    if ok:
        assert parse_seconds("goblet_x", value, minimum, maximum) >= minimum
    else:
        with pytest.raises(ValueError, match=rf"goblet_x must be between {minimum} and "
                                             rf"{maximum} seconds"):
            parse_seconds("goblet_x", value, minimum, maximum)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("s", id="unit-only"),
        pytest.param("-1", id="negative"),
        pytest.param("1.5", id="fraction"),
        pytest.param("1w", id="weeks"),
        pytest.param("10ms", id="milliseconds"),
        pytest.param("5M", id="upper-case-unit"),
        pytest.param("1h30m", id="compound"),
        pytest.param("sixty", id="words"),
        pytest.param("0x10", id="hex"),
        pytest.param("1e3", id="exponent"),
    ],
)
def test_parse_seconds_rejects_non_durations(value: str) -> None:
    with pytest.raises(ValueError, match=r"goblet_x must be a duration such as 60, 60s, 5m"):
        parse_seconds("goblet_x", value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        pytest.param("1", 1, id="one-byte"),
        pytest.param("65536", 65536, id="bytes"),
        pytest.param("10B", 10, id="B"),
        pytest.param("1K", 1024, id="K"),
        pytest.param("512KiB", 512 * 1024, id="KiB"),
        pytest.param("64MiB", 64 * 1024**2, id="MiB"),
        pytest.param("64M", 64 * 1024**2, id="M"),
        pytest.param("2GiB", 2 * 1024**3, id="GiB"),
        pytest.param("10G", 10 * 1024**3, id="G"),
        pytest.param("1TiB", 1024**4, id="TiB"),
        pytest.param("1T", 1024**4, id="T"),
        pytest.param(" 8 MiB ", 8 * 1024**2, id="spaces"),
    ],
)
def test_parse_size(value: str, size: int) -> None:
    assert parse_size("goblet_y", value) == size


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("MiB", id="unit-only"),
        pytest.param("-1", id="negative"),
        pytest.param("1.5MiB", id="fraction"),
        pytest.param("64mib", id="lower-case-unit"),
        pytest.param("64MB", id="decimal-unit"),
        pytest.param("64 M B", id="split-unit"),
        pytest.param("1PiB", id="unknown-unit"),
        pytest.param("1KiB1", id="trailing-digit"),
    ],
)
def test_parse_size_rejects_non_sizes(value: str) -> None:
    with pytest.raises(ValueError, match=r"goblet_y must be a size such as 65536, 512KiB"):
        parse_size("goblet_y", value)


@pytest.mark.parametrize(
    ("value", "minimum", "ok"),
    [
        pytest.param("1", 1, True, id="minimum"),
        pytest.param("0", 1, False, id="zero"),
        pytest.param("1023", 1024, False, id="one-below-1KiB"),
        pytest.param("1KiB", 1024, True, id="exactly-1KiB"),
        pytest.param("0", 0, True, id="zero-when-allowed"),
    ],
)
def test_parse_size_minimum(value: str, minimum: int, ok: bool) -> None:
    if ok:
        assert parse_size("goblet_y", value, minimum) >= minimum
    else:
        with pytest.raises(ValueError, match=rf"goblet_y must be at least {minimum} bytes"):
            parse_size("goblet_y", value, minimum)


def test_parse_cache_dir_relative_becomes_absolute(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_cache_dir("cache") == tmp_path.resolve() / "cache"
    assert not (tmp_path / "cache").exists()  # parsing creates nothing


def test_parse_cache_dir_expands_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_cache_dir("~/goblet") == tmp_path.resolve() / "goblet"


def test_parse_cache_dir_existing_dir_and_dotdot(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    assert parse_cache_dir(str(tmp_path / "a")) == (tmp_path / "a").resolve()
    assert parse_cache_dir(str(tmp_path / "a" / ".." / "b")) == (tmp_path / "b").resolve()


def test_parse_cache_dir_resolves_symlinks(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert parse_cache_dir(str(tmp_path / "link")) == (tmp_path / "real").resolve()


@pytest.mark.parametrize("value", ["", "   "], ids=["empty", "blank"])
def test_parse_cache_dir_rejects_empty(value: str) -> None:
    with pytest.raises(ValueError, match="is empty"):
        parse_cache_dir(value)


def test_parse_cache_dir_rejects_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        parse_cache_dir(str(target))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("proxy-1", "proxy-1", id="simple"),
        pytest.param("  node.a:1_x  ", "node.a:1_x", id="stripped-all-allowed-chars"),
        pytest.param("a", "a", id="one-char"),
        pytest.param("x" * 64, "x" * 64, id="64-chars"),
    ],
)
def test_parse_instance(value: str, expected: str) -> None:
    assert parse_instance(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("x" * 65, id="65-chars"),
        pytest.param("a b", id="space"),
        pytest.param("a\nb", id="lf"),
        pytest.param("a\r\nX-Evil: 1", id="header-injection"),
        pytest.param("caf\u00e9", id="non-ascii"),
        pytest.param("a/b", id="slash"),
        pytest.param("a\x00", id="nul"),
    ],
)
def test_parse_instance_rejects(value: str) -> None:
    with pytest.raises(ValueError, match=r"must be 1-64 of \[A-Za-z0-9._:-\]"):
        parse_instance(value)


@pytest.mark.parametrize("value", ["", "   "], ids=["empty", "blank"])
def test_parse_instance_defaults_to_the_host_name(value: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(options.socket, "gethostname", lambda: "build-host-7")
    assert parse_instance(value) == "build-host-7"


def test_parse_instance_refuses_an_unsafe_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(options.socket, "gethostname", lambda: "bad host")
    with pytest.raises(ValueError):
        parse_instance("")


def test_real_host_name_default_is_usable() -> None:
    if not 1 <= len(socket.gethostname()) <= 64:
        pytest.skip("this machine's host name is not a valid instance name")
    assert parse_instance("") == socket.gethostname()


def test_option_specs_have_unique_names_and_help() -> None:
    names = [o.name for o in OPTIONS]
    assert len(names) == len(set(names))
    for spec in OPTIONS:
        assert spec.name.startswith("goblet_")
        assert spec.help and "\n" not in spec.help


def test_default_durations_and_size_parse() -> None:
    defaults = {o.name: o.default for o in OPTIONS}
    assert parse_seconds("goblet_verdict_ttl", defaults["goblet_verdict_ttl"], 0) == 60
    assert parse_seconds("goblet_upstream_timeout", defaults["goblet_upstream_timeout"]) == 60
    assert parse_size("goblet_max_request_bytes",
                      defaults["goblet_max_request_bytes"]) == 64 * 1024**2


def test_default_hosts_parse() -> None:
    default = next(o for o in OPTIONS if o.name == "goblet_hosts").default
    assert parse_hosts(default) == frozenset((h, 443) for h in DEFAULT_HOSTS)


@pytest.mark.parametrize(("value", "expected"), [
    ("true", True), ("false", False), ("True", True), (" on ", True), ("off", False),
    ("yes", True), ("no", False), ("1", True), ("0", False),
])
def test_switches_accept_what_mitmproxy_booleans_accept(value: str, expected: bool) -> None:
    assert options.parse_bool("goblet_offline", value) is expected


@pytest.mark.parametrize("value", ["", "maybe", "2", "enabled"])
def test_switches_refuse_anything_else(value: str) -> None:
    with pytest.raises(ValueError, match="goblet_offline must be true or false"):
        options.parse_bool("goblet_offline", value)


def test_switch_options_parse_as_booleans() -> None:
    values = {spec.name: spec.default for spec in options.OPTIONS}
    values |= {"goblet_offline": "true", "goblet_maintenance": "false"}
    s = options.parse_settings(type("O", (), values)())
    assert s.offline is True and s.maintenance is False


def test_restart_options_are_the_listeners_the_cache_dir_and_the_fleet_connections() -> None:
    assert {spec.name for spec in options.OPTIONS if spec.restart} == {
        "goblet_cache_dir", "goblet_metrics_port", "goblet_metrics_host", "goblet_prefix_port",
        "goblet_store", "goblet_store_endpoint", "goblet_redis", "goblet_fleet_lease"}
    old = options.parse_settings(type("O", (), {s.name: s.default for s in options.OPTIONS})())
    assert options.needing_restart(old, old) == []
    assert options.needing_restart(old, replace(old, metrics_port=1, verdict_ttl=9)) == [
        "goblet_metrics_port"]


# -- parse_settings: every option at once ------------------------------------------------


def settings_from(**changed: object) -> options.Settings:
    """parse_settings of an options object holding every default, then ``changed``."""
    values: dict[str, object] = {spec.name: spec.default for spec in OPTIONS}
    values |= {f"goblet_{k}": v for k, v in changed.items()}
    return options.parse_settings(type("O", (), values)())


def test_the_defaults_parse_to_the_settings_the_help_promises() -> None:
    s = settings_from()
    assert s == options.Settings(
        cache_dir=Path("cache").resolve(), hosts=frozenset((h, 443) for h in DEFAULT_HOSTS),
        verdict_ttl=60, upstream_timeout=60, instance=s.instance,
        max_request_bytes=64 * 1024**2, min_free_bytes=1024**3, metrics_port=0,
        metrics_host="", log_format="text")  # every other field: the dataclass default
    assert s.instance == parse_instance("")


def test_each_value_reaches_its_field() -> None:
    s = settings_from(verdict_ttl="5m", upstream_timeout="2m", max_request_bytes="1MiB",
                      min_free_bytes="0", metrics_port="9100", prefix_port="8081",
                      metrics_host=" 0.0.0.0 ", log_format="json", cache_max_bytes="10GiB",
                      pack_cache_max_bytes="1GiB", maintenance="off",
                      full_repack_interval="1d", repack_threads="4", warm_interval="1h",
                      isolation="Tenant", max_partitions="3", negative_ttl="0",
                      offline="on", offline_grace="30m", request_body_timeout="10s",
                      instance="edge-1", hosts=["git.example:8443", "a.example,b.example"])
    assert (s.verdict_ttl, s.upstream_timeout, s.max_request_bytes, s.min_free_bytes) == (
        300, 120, 1024**2, 0)
    assert (s.metrics_port, s.prefix_port, s.metrics_host, s.log_format) == (
        9100, 8081, "0.0.0.0", "json")
    assert (s.cache_max_bytes, s.pack_cache_max_bytes, s.maintenance) == (
        10 * 1024**3, 1024**3, False)
    assert (s.full_repack_interval, s.repack_threads, s.warm_interval) == (86400, 4, 3600)
    assert (s.isolation, s.max_partitions, s.negative_ttl, s.offline, s.offline_grace) == (
        "tenant", 3, 0, True, 1800)
    assert (s.request_body_timeout, s.instance) == (10, "edge-1")
    assert s.hosts == {("git.example", 8443), ("a.example", 443), ("b.example", 443)}


def test_warm_files_must_exist(tmp_path: Path) -> None:
    urls, creds = tmp_path / "urls", tmp_path / "creds"
    urls.write_text("https://git.example/r\n")
    creds.write_text("Authorization: Bearer x\n")
    s = settings_from(warm_repos=str(urls), warm_credentials=str(creds))
    assert (s.warm_repos, s.warm_credentials) == (urls, creds)
    with pytest.raises(ValueError, match="goblet_warm_repos"):
        settings_from(warm_repos=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="goblet_warm_credentials"):
        settings_from(warm_credentials=str(tmp_path))  # a directory


def test_the_pack_cache_fits_in_half_the_cache_budget() -> None:
    assert settings_from(cache_max_bytes="10GiB").pack_cache_max_bytes == 2 * 1024**3
    capped = settings_from(cache_max_bytes="2GiB", pack_cache_max_bytes="2GiB")
    assert capped.pack_cache_max_bytes == 1024**3
    assert settings_from(cache_max_bytes="0").pack_cache_max_bytes == 2 * 1024**3


# (option, a bad value, what the error says): every option that can be wrong.
BAD = [
    ("store", "gs://bucket", "goblet_store"), ("store", "s3://b/../x", "goblet_store"),
    ("store_endpoint", "http://key:secret@minio:9000", "goblet_store_endpoint"),
    ("store_max_bytes", "big", "goblet_store_max_bytes"),
    ("store_partitions", "everyone", "goblet_store_partitions"),
    ("redis", "redis://:pw@host:6379/0", "goblet_redis"),
    ("fleet_lease", "1", "goblet_fleet_lease"),
    ("verdict_ttl", "soon", "goblet_verdict_ttl"), ("verdict_ttl", "2h", "goblet_verdict_ttl"),
    ("upstream_timeout", "0", "goblet_upstream_timeout"),
    ("max_request_bytes", "lots", "goblet_max_request_bytes"),
    ("min_free_bytes", "-1", "goblet_min_free_bytes"),
    ("metrics_port", "65536", "goblet_metrics_port"), ("metrics_port", "", "goblet_metrics_port"),
    ("prefix_port", "http", "goblet_prefix_port"),
    ("log_format", "xml", "goblet_log_format"), ("log_format", "JSON", "goblet_log_format"),
    ("cache_max_bytes", "1PiB", "goblet_cache_max_bytes"),
    ("pack_cache_max_bytes", "x", "goblet_pack_cache_max_bytes"),
    ("maintenance", "sometimes", "goblet_maintenance"),
    ("full_repack_interval", "59", "goblet_full_repack_interval"),
    ("repack_threads", "0", "goblet_repack_threads"),
    ("warm_interval", "9", "goblet_warm_interval"),
    ("isolation", "none", "goblet_isolation"),
    ("max_partitions", "many", "goblet_max_partitions"),
    ("negative_ttl", "2d", "goblet_negative_ttl"),
    ("offline", "auto", "goblet_offline"),
    ("offline_grace", "0", "goblet_offline_grace"),
    ("request_body_timeout", "0", "goblet_request_body_timeout"),
    ("allow_open_proxy", "sure", "goblet_allow_open_proxy"),
    ("relay_internal", "maybe", "goblet_relay_internal"),
    ("cold_clones", "tee", "goblet_cold_clones"),
    ("lfs", "partly", "goblet_lfs"),
    ("fast_dispatch", "quickly", "goblet_fast_dispatch"),
    ("lfs_link_ttl", "0", "goblet_lfs_link_ttl"), ("lfs_link_ttl", "2h", "goblet_lfs_link_ttl"),
    ("instance", "a b", "goblet_instance"),
    ("cache_dir", " ", "goblet_cache_dir"),
    ("hosts", [], "goblet_hosts"), ("hosts", ["exa mple.com"], "bad host name"),
    ("refs_ttl", "soon", "goblet_refs_ttl"), ("refs_ttl", "2d", "goblet_refs_ttl"),
    ("webhook_secret_file", "/nonexistent/secret", "goblet_webhook_secret_file"),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD,
                         ids=[f"{f}={v!r}" for f, v, _ in BAD])
def test_a_bad_value_is_refused_with_its_name(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settings_from(**{field: value})


def test_every_option_has_a_bad_value_above_or_takes_any_text() -> None:
    refused = {field for field, _, _ in BAD}
    any_text = {"metrics_host", "warm_repos", "warm_credentials"}  # files: tested above
    assert {spec.field for spec in OPTIONS} == refused | any_text


TEXT_OPTIONS = [spec.field for spec in OPTIONS if spec.typespec is str
                and spec.field not in ("cache_dir", "warm_repos", "warm_credentials",
                                       "webhook_secret_file")]


@pytest.mark.parametrize("field", TEXT_OPTIONS)
@pytest.mark.parametrize("tail", [" x", "s s", "\n1", "\x00", "!", "%"])
def test_a_valid_value_with_trailing_data_is_refused(field: str, tail: str) -> None:
    valid = {"metrics_port": "9100", "prefix_port": "8081", "instance": "edge-1",
             "log_format": "json", "isolation": "user", "maintenance": "on",
             "offline": "off"}.get(field, next(s.default for s in OPTIONS if s.field == field))
    settings_from(**{field: valid})
    if field == "metrics_host":
        assert settings_from(**{field: valid + tail}).metrics_host == (valid + tail).strip()
        return
    with pytest.raises(ValueError, match=f"goblet_{field}"):
        settings_from(**{field: valid + tail})


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(TEXT_OPTIONS), value=st.text(max_size=30))
def test_any_text_parses_or_is_refused_by_name(field: str, value: str) -> None:
    try:
        s = settings_from(**{field: value})
    except ValueError as e:
        assert f"goblet_{field}" in str(e)
    else:
        assert isinstance(s, options.Settings)
