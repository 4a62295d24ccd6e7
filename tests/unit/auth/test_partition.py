"""Partitions by isolation mode: only verified names choose a user partition."""

from __future__ import annotations

import base64

import pytest
from goblet.auth.credentials import Credential, TenantKeyer, credential_from_headers
from goblet.auth.partition import partition, proxy_logins_verified

KEYER = TenantKeyer(b"k" * 32)


def basic(user: str, secret: str) -> Credential:
    token = base64.b64encode(f"{user}:{secret}".encode()).decode()
    return credential_from_headers([("Authorization", f"Basic {token}")])


@pytest.mark.parametrize(("value", "verified"), [
    (None, False), ("", False), ("any", False), (" ANY ", False),
    ("alice:pw", True), ("@/etc/htpasswd", True), ("ldap:host:cn=x:ou=y", True),
])
def test_which_proxyauth_settings_verify_names(value: str | None, verified: bool) -> None:
    assert proxy_logins_verified(value) is verified


@pytest.mark.parametrize("mode", ["shared", "public"])
def test_shared_modes_have_one_partition(mode: str) -> None:
    assert partition(mode, basic("alice", "pw"), "t1", KEYER, verified_proxy_user=True) == ""


def test_tenant_mode_is_the_tenant() -> None:
    assert partition("tenant", basic("a", "b"), "t1", KEYER, verified_proxy_user=True) \
        == "tenant:t1"


def test_a_claimed_basic_user_name_never_picks_a_partition() -> None:
    alice = partition("user", basic("alice", "alice-pw"), "t-alice", KEYER,
                      verified_proxy_user=False)
    bob_as_alice = partition("user", basic("alice", "tok-bob"), "t-bob", KEYER,
                             verified_proxy_user=False)
    assert alice == "tenant:t-alice" and bob_as_alice == "tenant:t-bob"


def test_verified_proxy_logins_share_a_user_partition() -> None:
    one = Credential((("authorization", "Bearer x"),), proxy=("team-a", "pw"))
    two = Credential((("authorization", "Bearer y"),), proxy=("team-a", "pw"))
    other = Credential((), proxy=("team-b", "pw"))
    p1, p2, p3 = (partition("user", c, t, KEYER, verified_proxy_user=True)
                  for c, t in ((one, "t1"), (two, "t2"), (other, "t3")))
    assert p1 == p2 != p3 and p1.startswith("user:") and "team-a" not in p1
    # with proxyauth=any the same logins are only claims
    assert partition("user", one, "t1", KEYER, verified_proxy_user=False) == "tenant:t1"
