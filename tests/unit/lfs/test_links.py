"""Goblet links: valid only for their tenant, repo and oid, until they expire or are
revoked."""

from __future__ import annotations

import time

from goblet.auth.credentials import ANONYMOUS
from goblet.lfs.batch import TOKEN_RE, Download
from goblet.lfs.links import (
    MAX_REVOCATIONS,
    NO_CREDENTIAL,
    OTHER_CREDENTIAL,
    UNKNOWN,
    Grant,
    LinkTable,
)

OID = "a" * 64
REPO = "https://git.example/o/r.git"
D = Download(OID, 3, "https://media.example/x?sig=secret", (("Authorization", "secret"),))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def table(ttl: float = 60, max_links: int = 100, max_per_tenant: int = 100
          ) -> tuple[LinkTable, Clock]:
    clock = Clock()
    return LinkTable(ttl, clock=clock, max_links=max_links,
                     max_per_tenant=max_per_tenant), clock


def obj(i: int) -> Download:
    """Another object (its own oid) with the same href and header."""
    return Download(f"{i:064x}", 3, D.href, D.headers)


def test_a_link_is_honoured_for_its_tenant_repo_and_oid() -> None:
    links, _ = table()
    token = links.issue("t1", REPO, D)
    assert TOKEN_RE.fullmatch(token)
    got = links.check(token, tenant="t1", repo_url=REPO, oid=OID)
    assert isinstance(got, Grant) and got.download == D


def test_tokens_are_unguessable_and_name_nothing() -> None:
    links, _ = table()
    tokens = {links.issue("t1", REPO, obj(i)) for i in range(50)}
    assert len(tokens) == 50
    assert not any(OID[:8] in t for t in tokens)


def test_another_tenant_repo_or_oid_gets_a_refusal() -> None:
    links, _ = table()
    token = links.issue("t1", REPO, D)
    assert links.check(token, tenant="t2", repo_url=REPO, oid=OID) is OTHER_CREDENTIAL
    assert links.check(token, tenant=ANONYMOUS, repo_url=REPO, oid=OID) is NO_CREDENTIAL
    assert links.check(token, tenant="t1", repo_url=REPO + "x", oid=OID) is UNKNOWN
    assert links.check(token, tenant="t1", repo_url=REPO, oid="b" * 64) is UNKNOWN
    assert links.check("x" * 43, tenant="t1", repo_url=REPO, oid=OID) is UNKNOWN


def test_an_anonymous_grant_is_not_for_a_credential() -> None:
    links, _ = table()
    token = links.issue(ANONYMOUS, REPO, D)
    assert links.check(token, tenant="t1", repo_url=REPO, oid=OID) is OTHER_CREDENTIAL
    assert isinstance(links.check(token, tenant=ANONYMOUS, repo_url=REPO, oid=OID), Grant)


def test_links_expire() -> None:
    links, clock = table(ttl=10)
    token = links.issue("t1", REPO, D)
    clock.now += 10
    assert isinstance(links.check(token, tenant="t1", repo_url=REPO, oid=OID), Grant)
    clock.now += 0.1
    assert links.check(token, tenant="t1", repo_url=REPO, oid=OID) is UNKNOWN
    links.issue("t1", REPO, D)  # issuing drops the expired ones
    assert len(links) == 1


def test_revoking_drops_every_link_of_the_tenant_in_the_repo_only() -> None:
    links, _ = table()
    mine = [links.issue("t1", REPO, obj(i)) for i in range(3)]
    other_repo = links.issue("t1", REPO + "2", D)
    other_tenant = links.issue("t2", REPO, D)
    assert links.revoke("t1", REPO) == 3 and links.revoke("t1", REPO) == 0
    assert all(links.check(t, tenant="t1", repo_url=REPO, oid=f"{i:064x}") is UNKNOWN
               for i, t in enumerate(mine))
    assert isinstance(links.check(other_repo, tenant="t1", repo_url=REPO + "2", oid=OID), Grant)
    assert isinstance(links.check(other_tenant, tenant="t2", repo_url=REPO, oid=OID), Grant)


def test_the_table_is_bounded_oldest_first() -> None:
    links, _ = table(max_links=3)
    tokens = [links.issue(f"t{i}", REPO, D) for i in range(5)]
    assert len(links) == 3
    assert links.check(tokens[0], tenant="t0", repo_url=REPO, oid=OID) is UNKNOWN
    assert isinstance(links.check(tokens[-1], tenant="t4", repo_url=REPO, oid=OID), Grant)


def test_a_grant_never_prints_its_href_or_headers() -> None:
    links, _ = table()
    token = links.issue("t1", REPO, D)
    grant = links.check(token, tenant="t1", repo_url=REPO, oid=OID)
    assert "secret" not in repr(grant) and "secret" not in str(grant)


def test_one_object_granted_again_keeps_its_one_link_renewed() -> None:
    links, clock = table(ttl=10)
    token = links.issue("t1", REPO, D)
    clock.now += 8
    fresh = Download(OID, 3, "https://media.example/x?sig=new", ())
    assert [links.issue("t1", REPO, fresh) for _ in range(1000)] == [token] * 1000
    assert len(links) == 1
    clock.now += 8  # past the first grant's expiry, within the renewal's
    got = links.check(token, tenant="t1", repo_url=REPO, oid=OID)
    assert isinstance(got, Grant) and got.download == fresh and got.issued == 108
    assert links.issue("t2", REPO, D) != token and links.issue("t1", REPO + "2", D) != token


def test_a_tenant_flooding_the_table_only_evicts_its_own_links() -> None:
    links, _ = table(max_links=1000, max_per_tenant=10)
    bob = links.issue("bob", REPO, D)
    for i in range(5000):
        links.issue("mallory", REPO, obj(i))
    assert len(links) == 11
    assert isinstance(links.check(bob, tenant="bob", repo_url=REPO, oid=OID), Grant)


def test_several_tenants_filling_the_table_evict_from_the_largest_holder() -> None:
    # each within its own cap, together over the table's: bob's one link stays
    links, _ = table(max_links=100, max_per_tenant=40)
    bob = links.issue("bob", REPO, D)
    for i in range(400):
        links.issue(f"mallory{i % 4}", REPO, obj(i))
    assert len(links) == 100
    assert isinstance(links.check(bob, tenant="bob", repo_url=REPO, oid=OID), Grant)
    # the largest holders lost their oldest links; the newest are honoured
    assert isinstance(links.check(links.issue("mallory3", REPO, obj(399)), tenant="mallory3",
                                  repo_url=REPO, oid=obj(399).oid), Grant)
    for _ in range(3):  # after drops and revocations the counts stay right
        links.revoke("mallory0", REPO)
        links.issue("carol", REPO, D)
    assert len(links) <= 100 and isinstance(
        links.check(bob, tenant="bob", repo_url=REPO, oid=OID), Grant)


def test_revoking_costs_nothing_like_a_scan_of_the_table() -> None:
    links, _ = table(max_links=300_000, max_per_tenant=300_000)
    for i in range(200_000):
        links.issue("alice", REPO, obj(i))
    started = time.process_time()
    for i in range(1000):
        links.revoke("anonymous", f"{REPO}{i}")
    assert time.process_time() - started < 0.5  # a scan each would take minutes
    assert links.revoke("alice", REPO) == 200_000 and len(links) == 0


def test_live_tokens_are_found_in_any_spelling_and_hidden() -> None:
    """A live token in a path is found as it is, inside a longer run, and behind
    percent-escapes (decoded up to twice); an expired or unknown one is not."""
    links, clock = table(ttl=60)
    token = links.issue("t1", REPO, D)
    escaped = "".join(f"%{ord(c):02X}" for c in token[:3]) + token[3:]
    for text in (f"/o/r.git/info/lfs/goblet/{token}/{OID}", f"/x{token}{OID}",
                 f"/info/lfs/g%6Fblet/{escaped}", f"/a%252F{escaped.replace('%', '%25')}",
                 f"/info/./lfs/goblet;x/{token}"):
        assert links.live_in(text)[1] == {token}, text
        hidden = links.hide(text)
        assert token not in hidden and token[1:] not in hidden and "-" in hidden, hidden
    other = "B" * 43
    assert links.live_in(f"/o/{other}") == (f"/o/{other}", set())
    assert links.hide("/o/r.git/info/refs") == "/o/r.git/info/refs"
    clock.now += 61
    assert links.live_in(f"/o/{token}")[1] == set()


def test_only_the_start_of_a_long_text_is_looked_at() -> None:
    links, _ = table()
    token = links.issue("t1", REPO, D)
    assert links.live_in("/" + "a" * 9000 + "/" + token)[1] == set()  # beyond MAX_SCAN
    assert links.live_in("/" + "a" * 100 + "/" + token)[1] == {token}


def test_revocations_are_remembered_for_answers_read_meanwhile_within_a_bound() -> None:
    now = [100.0]
    links = LinkTable(60, clock=lambda: now[0])
    links.revoke("alice", "u")
    assert links.revoked_since("alice", "u", 100.0)
    assert not links.revoked_since("alice", "u", 100.5)  # an answer that arrived later
    assert not links.revoked_since("bob", "u", 0.0)
    for i in range(MAX_REVOCATIONS):
        links.revoke(f"t{i}", "u")
    assert not links.revoked_since("alice", "u", 0.0)  # the oldest went first
    assert links.revoked_since(f"t{MAX_REVOCATIONS - 1}", "u", 0.0)
