"""Open-proxy check at start-up and routing of requests addressed to goblet itself."""

from __future__ import annotations

import pytest
from goblet.observe import exposure
from goblet.observe.exposure import Destination, Listener, PlainRequest
from mitmproxy import options as mitm_options
from mitmproxy.proxy.mode_specs import ProxyMode

# -- listeners: the same addresses mitmproxy binds ------------------------------------


@pytest.mark.parametrize(
    ("modes", "listen_host", "listen_port"),
    [
        (["regular"], "", None),
        (["regular"], "127.0.0.1", 8080),
        (["regular", "regular@8081"], "0.0.0.0", 3128),
        (["regular@127.0.0.1:8080", "socks5"], "", None),
        (["upstream:http://parent.example:3128@10.0.0.5:9000"], "", None),
        (["reverse:https://git.example.com@[::1]:8443"], "0.0.0.0", None),
        (["wireguard", "dns@5353"], "::", None),
        (["transparent@::1:8080"], "", None),
    ],
)
def test_listeners_agree_with_mitmproxys_own_parser(
        modes: list[str], listen_host: str, listen_port: int | None) -> None:
    ours = exposure.listeners(modes, listen_host, listen_port)
    theirs = []
    for spec in modes:
        mode = ProxyMode.parse(spec)
        theirs.append(Listener(mode.type_name, mode.listen_host(listen_host),
                               mode.listen_port(listen_port)))
    assert [(x.mode, x.host.strip("[]"), x.port) for x in ours] == \
        [(x.mode, x.host.strip("[]"), x.port) for x in theirs]


@pytest.mark.parametrize("spec", ["regular@0.0.0.0:+18080", "regular@0.0.0.0:18_080",
                                  "regular@ 18080", "regular@:+18080", "regular@0.0.0.0: 18080"])
def test_ports_are_read_as_mitmproxy_reads_them(spec: str) -> None:
    """A port spelling mitmproxy accepts (``int``) binds beyond loopback: refused."""
    mode = ProxyMode.parse(spec)
    assert exposure.listeners([spec], "", None) == \
        [Listener("regular", mode.listen_host(""), mode.listen_port(None))]
    assert exposure.start_verdict(exposure.listeners([spec], "", None), None, "off").refuse


def test_a_port_mitmproxy_cannot_read_counts_as_open() -> None:
    assert exposure.listeners(["regular@127.0.0.1:80x"], "127.0.0.1", None) == \
        [Listener("regular", "", 0)]


def test_modes_without_a_socket_are_not_listeners() -> None:
    assert exposure.listeners(["local", "tun", "regular"], "", 8080) == \
        [Listener("regular", "", 8080)]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost",
                                  "LOCALHOST.", "::ffff:127.0.0.1"])
def test_loopback_hosts(host: str) -> None:
    assert exposure.is_loopback(host)


@pytest.mark.parametrize("host", ["", "0.0.0.0", "::", "10.0.0.5", "192.168.1.2",
                                  "169.254.169.254", "fe80::1", "myhost", "localhost.example",
                                  "::ffff:10.0.0.1"])
def test_hosts_beyond_loopback(host: str) -> None:
    assert not exposure.is_loopback(host)


# -- the start-up verdict --------------------------------------------------------------


ALL = [Listener("regular", "", 8080)]
LOOPBACK = [Listener("regular", "127.0.0.1", 8080), Listener("regular", "::1", 8081)]


def test_loopback_only_starts_silently() -> None:
    assert exposure.start_verdict(LOOPBACK, None, "off") == exposure.StartVerdict()


def test_every_interface_without_proxyauth_is_refused_in_one_line() -> None:
    verdict = exposure.start_verdict(ALL, None, "off")
    assert verdict.refuse
    assert "\n" not in verdict.message
    for needle in ("regular@*:8080", "no proxyauth", "goblet_allow_open_proxy=on",
                   "127.0.0.1"):
        assert needle in verdict.message


def test_the_opt_in_turns_the_refusal_into_a_warning() -> None:
    verdict = exposure.start_verdict(ALL, None, "on")
    assert not verdict.refuse
    assert "open proxy on regular@*:8080" in verdict.message


@pytest.mark.parametrize("auth", ["alice:secret", "@/etc/goblet/htpasswd",
                                  "ldap:ldap.example:cn=x,dc=y:pw:dc=y"])
def test_proxyauth_guards_relaying_modes(auth: str) -> None:
    assert exposure.start_verdict(ALL, auth, "off") == exposure.StartVerdict()
    socks = [Listener("socks5", "0.0.0.0", 1080), Listener("upstream", "10.0.0.5", 3128)]
    assert exposure.start_verdict(socks, auth, "off") == exposure.StartVerdict()


def test_proxyauth_any_checks_nothing() -> None:
    verdict = exposure.start_verdict(ALL, "any", "off")
    assert verdict.refuse and "proxyauth=any checks no password" in verdict.message


@pytest.mark.parametrize("auth", [":", "ci:", " ci: ", " ldap:", "\t@x:", "ci: \t"])
def test_a_single_user_with_an_empty_password_checks_nothing(auth: str) -> None:
    verdict = exposure.start_verdict(ALL, auth, "off")
    assert verdict.refuse and "empty password checks no password" in verdict.message
    assert exposure.authenticates(":pw") and exposure.authenticates("@/x:")


def test_proxyauth_does_not_guard_transparent_or_wireguard() -> None:
    found = [Listener("transparent", "0.0.0.0", 8080), Listener("wireguard", "", 51820)]
    verdict = exposure.start_verdict(found, "alice:secret", "off")
    assert verdict.refuse
    assert "transparent@0.0.0.0:8080" in verdict.message
    assert "wireguard@*:51820" in verdict.message


def test_a_reverse_proxy_relays_to_one_target_only() -> None:
    found = [Listener("reverse", "0.0.0.0", 443), *LOOPBACK]
    assert exposure.start_verdict(found, None, "off") == exposure.StartVerdict()


def test_the_path_prefix_listener_relays_nowhere_else() -> None:
    found = [Listener("regular", "127.0.0.1", 8080), Listener("regular", "0.0.0.0", 8081)]
    assert exposure.start_verdict(found, None, "off", prefix_port=8081) == \
        exposure.StartVerdict()
    assert exposure.start_verdict(found, None, "off", prefix_port=9999).refuse
    socks = [Listener("socks5", "0.0.0.0", 8081)]
    assert exposure.start_verdict(socks, None, "off", prefix_port=8081).refuse


def test_only_the_exposed_listener_is_named() -> None:
    found = [Listener("regular", "127.0.0.1", 8080), Listener("regular", "10.1.2.3", 8081)]
    message = exposure.start_verdict(found, None, "off").message
    assert "regular@10.1.2.3:8081" in message and "8080" not in message


def test_a_bad_opt_in_value_is_refused() -> None:
    with pytest.raises(ValueError, match="goblet_allow_open_proxy must be true or false"):
        exposure.start_verdict(LOOPBACK, None, "yes please")


def options(**values: object) -> mitm_options.Options:
    opts = mitm_options.Options()
    opts.add_option("proxyauth", str | None, None, "")
    spec = exposure.OPTION
    opts.add_option(spec.name, spec.typespec, spec.default, spec.help)
    opts.update(**values)
    return opts


def test_verdict_from_mitmproxy_options() -> None:
    assert exposure.start_verdict_for(options(listen_host="127.0.0.1")) == \
        exposure.StartVerdict()
    assert exposure.start_verdict_for(options()).refuse  # listen_host "" = every interface
    assert exposure.start_verdict_for(options(mode=["regular@127.0.0.1:8080"])) == \
        exposure.StartVerdict()
    assert not exposure.start_verdict_for(options(goblet_allow_open_proxy="on")).refuse
    assert not exposure.start_verdict_for(options(proxyauth="u:p")).refuse
    bad = exposure.start_verdict_for(options(goblet_allow_open_proxy="maybe"))
    assert bad.refuse and "goblet_allow_open_proxy must be" in bad.message
    assert exposure.start_verdict_for(options(), listening=False) == exposure.StartVerdict()
    opts = options(listen_host="0.0.0.0", mode=["regular@127.0.0.1:8080", "regular@8081"])
    opts.add_option("goblet_prefix_port", str, "8081", "")
    assert exposure.start_verdict_for(opts) == exposure.StartVerdict()


# -- routing requests addressed to goblet ---------------------------------------------


def local(host: str) -> bool:
    return host in ("127.0.0.1", "10.1.2.3")


def plain(path: str = "/metrics", *, host: str = "127.0.0.1", port: int = 8080,
          method: str = "GET", scheme: str = "http", via: tuple[str, ...] = ()) -> PlainRequest:
    return PlainRequest(scheme, method, path, host, port, via)


def routed(req: PlainRequest) -> Destination:
    return exposure.route(req, proxy_ports={8080, 8081}, is_local=local, hop="goblet-me")


def test_endpoints_at_a_local_address_on_a_proxy_port() -> None:
    assert routed(plain()) is Destination.ENDPOINT
    assert routed(plain("/readyz?x=1", host="10.1.2.3", port=8081, method="HEAD")) \
        is Destination.ENDPOINT


def test_other_hosts_paths_and_methods_are_relayed() -> None:
    assert routed(plain(host="exporter.internal", port=8080)) is Destination.RELAY
    assert routed(plain(port=9100)) is Destination.RELAY
    assert routed(plain("/metrics/x")) is Destination.RELAY
    assert routed(plain(method="POST")) is Destination.RELAY


def test_a_request_that_came_back_is_ours() -> None:
    back = ("1.1 corp-proxy (squid)", "1.0 goblet-me")
    assert routed(plain(host="goblet.example", via=back)) is Destination.ENDPOINT
    assert (routed(plain("/healthz", host="dockerhost", port=18080, via=back))
            is Destination.ENDPOINT)
    assert routed(plain("/anything", host="goblet.example", via=back)) is Destination.LOOP
    assert routed(plain(method="POST", host="goblet.example", via=back)) is Destination.LOOP


def test_another_goblets_via_name_is_not_ours() -> None:
    assert (routed(plain("/x", host="goblet.example", via=("1.1 goblet-other",)))
            is Destination.RELAY)


def test_https_is_not_routed_here() -> None:
    assert routed(plain(scheme="https", via=("1.1 goblet-me",))) is Destination.OTHER


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ((), set()),
        (("1.1 goblet-me",), {"goblet-me"}),
        (("1.0 fred, 1.1 p.example.net:8080 (Apache/1.1)", "HTTP/1.1 goblet-me"),
         {"fred", "p.example.net:8080", "goblet-me"}),
        (("1.1 a (comment, with comma), 1.1 b",), {"a", "b"}),
        (("garbage",), set()),
    ],
)
def test_via_names(values: tuple[str, ...], names: set[str]) -> None:
    assert exposure.via_names(values) == names


def test_add_via_appends_this_process() -> None:
    assert exposure.add_via([], "goblet-me") == "1.1 goblet-me"
    assert exposure.add_via(["1.0 fred", " "], "goblet-me") == "1.0 fred, 1.1 goblet-me"
    added = exposure.add_via(["1.1 a"])
    assert exposure.HOP in exposure.via_names([added])


def test_each_process_has_its_own_hop_name() -> None:
    assert exposure.HOP.startswith("goblet-") and len(exposure.HOP) == len("goblet-") + 12
