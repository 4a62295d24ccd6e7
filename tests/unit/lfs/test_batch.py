"""The LFS batch API rules: routes, and which downloads a rewrite links (and how)."""

from __future__ import annotations

import contextlib
import json

import pytest
from goblet.lfs import batch
from goblet.protocol.errors import ProtocolError
from hypothesis import given
from hypothesis import strategies as st

OID = "a" * 64
OTHER = "b" * 64
TOKEN = "T" * 43


def answer(*objects: dict[str, object], transfer: str | None = "basic") -> bytes:
    body: dict[str, object] = {"objects": list(objects)}
    if transfer is not None:
        body["transfer"] = transfer
    return json.dumps(body).encode()


def granted(oid: str = OID, size: int = 5, **extra: object) -> dict[str, object]:
    return {"oid": oid, "size": size, "authenticated": True,
            "actions": {"download": {"href": "https://media.example/o?sig=s",
                                     "header": {"Authorization": "RemoteAuth s"},
                                     "expires_in": 60, **extra}}}


@pytest.mark.parametrize(("method", "path", "kind", "repo"), [
    ("POST", "/o/r.git/info/lfs/objects/batch", batch.LfsKind.BATCH, "/o/r.git"),
    ("GET", f"/o/r.git/info/lfs/goblet/{TOKEN}/{OID}", batch.LfsKind.LINK, "/o/r.git"),
    ("HEAD", f"/r/info/lfs/goblet/{TOKEN}/{OID}", batch.LfsKind.LINK, "/r"),
    ("POST", "/o/r.git/info/lfs/locks/verify", batch.LfsKind.OTHER, "/o/r.git"),
    ("GET", "/o/r.git/info/lfs/objects/" + OID, batch.LfsKind.OTHER, "/o/r.git"),
    ("POST", "/o/r.git/info/lfs/objects/batch?x=1", batch.LfsKind.OTHER, "/o/r.git"),
    ("GET", "/o/r.git/info/lfs/objects/batch", batch.LfsKind.OTHER, "/o/r.git"),
])
def test_routes(method: str, path: str, kind: batch.LfsKind, repo: str) -> None:
    route = batch.classify(method, path)
    assert route is not None and (route.kind, route.repo_path) == (kind, repo)
    if kind is batch.LfsKind.LINK:
        assert (route.token, route.oid) == (TOKEN, OID)


@pytest.mark.parametrize("path", ["/o/r.git/info/refs", "/o/r.git/info/lfsx/objects/batch",
                                  "/o/r.git/git-upload-pack", "/goblet/goblet.git/info/refs",
                                  "/o/goblet/info/lfsx/goblet/x"])
def test_paths_outside_an_lfs_endpoint_are_not_lfs(path: str) -> None:
    assert batch.classify("POST", path) is None


@pytest.mark.parametrize("path", [
    f"/o/r.git/info/lfs/goblet/{TOKEN[:-1]}/{OID}",  # short token
    f"/o/r.git/info/lfs/goblet/{TOKEN}/{OID[:-1]}",  # short oid
    f"/o/r.git/info/lfs/goblet/{TOKEN}/{OID.upper()}",
    f"/o/r.git/info/lfs/goblet/{TOKEN}/{OID}/x",
    f"/o/r.git/info/lfs/goblet/{TOKEN}/{OID}?a=b",
    f"/o/../r.git/info/lfs/goblet/{TOKEN}/{OID}",  # unsafe repo path
    # misspelled links: refused, never passed upstream with the token in them
    f"/o/r.git/info/lfs//goblet/{TOKEN}/{OID}",
    f"/o/r.git/info/LFS/goblet/{TOKEN}/{OID}",
    f"/o/r.git/Info/Lfs/Goblet/{TOKEN}/{OID}",
    f"/o/r.git/info%2Flfs%2fgoblet%2F{TOKEN}/{OID}",
    f"/o/r.git/info/lfs/%67oblet/{TOKEN}/{OID}",
    f"/o/r.git/info/lfs/goblet//{TOKEN}/{OID}",
])
def test_malformed_links_and_unsafe_repo_paths_are_refused(path: str) -> None:
    with pytest.raises(ProtocolError):
        batch.classify("GET", path)


def test_a_link_path_reads_back_as_the_same_link() -> None:
    route = batch.classify("GET", batch.link_path("/o/r.git", TOKEN, OID))
    assert route == batch.LfsTarget(batch.LfsKind.LINK, "/o/r.git", TOKEN, OID)


def test_granted_downloads_are_linked_and_lose_their_href_headers_and_expiry() -> None:
    seen: list[batch.Download] = []

    def link(d: batch.Download) -> str:
        seen.append(d)
        return f"https://goblet/{d.oid}"

    body = answer(granted(), {"oid": OTHER, "size": 1, "error": {"code": 404}})
    out = json.loads(batch.rewrite_answer(body, link) or b"")
    assert out["objects"][0] == {"oid": OID, "size": 5,
                                 "actions": {"download": {"href": f"https://goblet/{OID}"}}}
    assert out["objects"][1] == {"oid": OTHER, "size": 1, "error": {"code": 404}}
    assert seen == [batch.Download(OID, 5, "https://media.example/o?sig=s",
                                   (("Authorization", "RemoteAuth s"),))]
    assert b"sig=s" not in json.dumps(out).encode()


@pytest.mark.parametrize("obj", [
    granted(oid="A" * 64), granted(oid="a" * 63), granted(size=-1), granted(size=True),
    granted(size="5"), {"oid": OID, "size": 5, "actions": {"upload": {"href": "https://x"}}},
    granted(href="file:///etc/passwd"), granted(header={"X": 1}),
    granted(header={"X": "a\r\nb"}), {"oid": OID, "size": 5}, "not an object",
])
def test_what_is_not_a_well_formed_grant_is_left_as_upstream_sent_it(obj: object) -> None:
    body = json.dumps({"objects": [obj]}).encode()
    assert batch.rewrite_answer(body, lambda d: "https://goblet/x") is None


def test_other_transfer_adapters_and_declined_objects_are_left_alone() -> None:
    assert batch.rewrite_answer(answer(granted(), transfer="ssh"), lambda d: "x") is None
    assert batch.rewrite_answer(answer(granted()), lambda d: None) is None
    assert batch.rewrite_answer(answer(granted(), transfer=None), lambda d: "x") is not None


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b'{"objects": {}}', b"\xff\xfe",
                                  b'"objects"'])
def test_what_is_not_a_batch_answer_is_the_upstream_s_fault(body: bytes) -> None:
    with pytest.raises(ProtocolError) as e:
        batch.rewrite_answer(body, lambda d: "x")
    assert e.value.culprit == "upstream"


@given(st.binary(max_size=300))
def test_any_bytes_rewrite_or_raise_a_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):  # and nothing else
        batch.rewrite_answer(data, lambda d: "x")


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=70),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(["oid", "size", "actions", "download",
                                                       "href", "header", "objects", "error"]),
                                      inner, max_size=4), max_leaves=20))
def test_any_json_rewrites_or_raises_a_protocol_error(value: object) -> None:
    with contextlib.suppress(ProtocolError):  # and nothing else
        batch.rewrite_answer(json.dumps({"objects": [value]}).encode(), lambda d: "x")


@pytest.mark.parametrize(("href", "expected"), [
    ("https://media.example/o?sig=s", ("https", "media.example", 443, "/o?sig=s",
                                       "media.example")),
    ("HTTP://Media.Example:8080", ("http", "media.example", 8080, "/", "Media.Example:8080")),
    ("https://[::1]:9/x#frag", ("https", "::1", 9, "/x", "[::1]:9")),
    ("https://10.0.0.1/a%20b", ("https", "10.0.0.1", 443, "/a%20b", "10.0.0.1")),
])
def test_hrefs_goblet_requests(href: str, expected: tuple[object, ...]) -> None:
    got = batch.parse_href(href)
    assert got is not None
    assert (got.scheme, got.host, got.port, got.path, got.host_header) == expected


@pytest.mark.parametrize("href", [
    "https://h:99999/", "https://h:abc/", "https://h:0/", "https://[::1/", "https://[zz]/",
    "https:///x", "https://:443/x", "https://h/a b", "https://h/a\tb", "https://h/\x7f",
    "https://h/caf\u00e9", "https://u:p@h/", "https://h@h2/", "https://h\\@h2/",
    "ftp://h/", "//h/x", "https://h h/", "https://h_/x\n", "https://-h.example:/x:y@z",
])
def test_hrefs_goblet_refuses(href: str) -> None:
    assert batch.parse_href(href) is None
    obj = granted()
    obj["actions"]["download"]["href"] = href  # type: ignore[index]
    assert batch.granted_download(obj) is None  # left as the upstream sent it


@pytest.mark.parametrize("header", [
    {"Bad Name": "x"}, {"": "x"}, {"X": "a\x01b"}, {"X": "a\x7fb"}, {"X": "\ud800"},
    {"X:Y": "v"},
])
def test_action_headers_goblet_would_not_send_leave_the_object_unlinked(
        header: dict[str, str]) -> None:
    obj = granted()
    obj["actions"]["download"]["header"] = header  # type: ignore[index]
    assert batch.granted_download(obj) is None


def test_action_headers_with_tabs_and_utf8_are_sent() -> None:
    obj = granted()
    obj["actions"]["download"]["header"] = {"X-A": "a\tb", "X-B": "caf\u00e9"}  # type: ignore[index]
    got = batch.granted_download(obj)
    assert got is not None and got.headers == (("X-A", "a\tb"), ("X-B", "caf\u00e9"))
