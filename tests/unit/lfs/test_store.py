"""The LFS store keeps an object only when its bytes are its oid; the transfer holds the
last piece back until they are."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import pytest
from goblet.cache.recovery import sweep_abandoned
from goblet.lfs.serve import Transfer
from goblet.lfs.store import LfsScope, LfsStore, ObjectWriter

DATA = b"hello lfs" * 1000
OID = hashlib.sha256(DATA).hexdigest()
HOST = LfsScope("git.example.com")


@pytest.fixture
def store(tmp_path: Path) -> LfsStore:
    s = LfsStore(tmp_path)
    s.prepare()
    return s


def test_a_verified_object_is_kept_content_addressed(store: LfsStore, tmp_path: Path) -> None:
    w = store.writer(HOST, OID, len(DATA))
    for i in range(0, len(DATA), 1000):
        w.feed(DATA[i:i + 1000])
    assert w.commit()
    where = tmp_path / "lfs" / HOST.origin_dir / "shared" / OID[:2] / OID[2:4] / OID
    assert where.read_bytes() == DATA
    assert (tmp_path / "lfs" / HOST.origin_dir / "origin").read_text() == "git.example.com\n"
    assert store.has(HOST, OID, len(DATA)) and not store.has(HOST, OID, len(DATA) + 1)
    assert [(o.oid, o.origin) for o in store.objects()] == [(OID, "git.example.com")]
    assert not list(store.tmp_dir.iterdir())


def test_objects_are_kept_after_the_lfs_dir_was_removed(store: LfsStore, tmp_path: Path) -> None:
    """An operator (or a test) may remove ``lfs/`` under a running proxy: the next
    verified object is kept all the same."""
    shutil.rmtree(tmp_path / "lfs")
    w = store.writer(HOST, OID, len(DATA))
    w.feed(DATA)
    assert w.commit() and store.has(HOST, OID, len(DATA))


@pytest.mark.parametrize("fed", [DATA[:-1], DATA + b"x", b"x" + DATA[1:], b""])
def test_wrong_or_short_bytes_are_never_kept(store: LfsStore, fed: bytes) -> None:
    w = store.writer(HOST, OID, len(DATA))
    w.feed(fed)
    assert not w.commit()
    assert not store.has(HOST, OID, len(DATA)) and not list(store.objects())
    assert not list(store.tmp_dir.iterdir())


def test_abort_leaves_nothing(store: LfsStore) -> None:
    w = store.writer(HOST, OID, len(DATA))
    w.feed(DATA)
    w.abort()
    assert not list(store.objects()) and not list(store.tmp_dir.iterdir())


@pytest.mark.parametrize("oid", ["../" + "a" * 61, "A" * 64, "a" * 63, ""])
def test_only_sha256_oids_become_paths(store: LfsStore, oid: str) -> None:
    with pytest.raises(ValueError, match="oid"):
        store.path_for(HOST, oid)
    with pytest.raises(ValueError, match="oid"):
        store.writer(HOST, oid, 1)


def test_remove_frees_the_object(store: LfsStore) -> None:
    w = store.writer(HOST, OID, len(DATA))
    w.feed(DATA)
    assert w.commit()
    assert (store.remove(OID) or 0) > 0 and not store.has(HOST, OID, len(DATA))
    assert store.remove(OID) is None


def pieces(data: bytes, size: int = 4096) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def test_a_transfer_passes_every_byte_on_one_piece_late_and_stores(store: LfsStore) -> None:
    t = Transfer(OID, len(DATA), lambda: store.writer(HOST, OID, len(DATA)))
    t.start(200, None)
    out = [t.stream(p) for p in pieces(DATA)]
    assert out[0] == [] and all(len(o) == 1 and o[0] for o in out[1:])  # never an empty piece
    assert b"".join(b"".join(o) for o in out) == DATA[:-len(pieces(DATA)[-1])]
    out.append(t.stream(b""))
    assert b"".join(b"".join(o) for o in out) == DATA and not t.corrupt
    assert t.finish(True) and store.has(HOST, OID, len(DATA))


def test_a_corrupt_transfer_never_sends_its_last_piece_nor_stores(store: LfsStore) -> None:
    bad = b"X" + DATA[1:]
    t = Transfer(OID, len(DATA), lambda: store.writer(HOST, OID, len(DATA)))
    t.start(200, "identity")
    sent = b"".join(b"".join(t.stream(p)) for p in [*pieces(bad), b""])
    assert t.corrupt and len(sent) < len(DATA)
    assert not t.finish(True) and not list(store.objects()) and not list(store.tmp_dir.iterdir())


def test_a_cut_transfer_is_not_stored(store: LfsStore) -> None:
    t = Transfer(OID, len(DATA), lambda: store.writer(HOST, OID, len(DATA)))
    t.start(200, None)
    for p in pieces(DATA)[:-1]:
        t.stream(p)
    assert not t.finish(False) and not list(store.objects())


@pytest.mark.parametrize(("status", "encoding"), [(403, None), (200, "gzip"), (304, None)])
def test_answers_that_are_not_the_object_pass_through_unchecked(
        store: LfsStore, status: int, encoding: str | None) -> None:
    t = Transfer(OID, len(DATA), lambda: store.writer(HOST, OID, len(DATA)))
    t.start(status, encoding)
    assert t.stream(b"abc") == [b"abc"] and t.stream(b"") == []
    assert not t.corrupt and not t.finish(True) and not list(store.tmp_dir.iterdir())


def test_an_unstreamed_answer_is_checked_whole(store: LfsStore) -> None:
    empty = hashlib.sha256(b"").hexdigest()
    t = Transfer(empty, 0, lambda: store.writer(HOST, empty, 0))
    t.start(200, None)
    t.whole(b"")
    assert not t.corrupt and t.finish(True) and store.has(HOST, empty, 0)
    t = Transfer(empty, 0, lambda: store.writer(HOST, empty, 0))
    t.start(200, None)
    t.whole(b"x")
    assert t.corrupt and not t.finish(True)


def test_start_up_removes_only_stale_temporary_objects(store: LfsStore) -> None:

    stale, live = store.tmp_dir / "obj-stale", store.tmp_dir / "obj-live"
    other = store.tmp_dir / "not-an-object"
    for path in (stale, live):
        path.write_bytes(b"x")
    other.write_bytes(b"y")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    assert store.prepare() == 1
    assert not stale.exists() and live.exists() and other.exists()


def test_objects_in_progress_survive_the_sweep_of_the_cache_s_tmp(
        store: LfsStore, tmp_path: Path) -> None:
    """The cache's tmp/ sweep removes work no writer lock guards: LFS writers stay out."""
    (tmp_path / "tmp").mkdir()
    w = store.writer(HOST, OID, len(DATA))
    w.feed(DATA[:100])
    sweep_abandoned(tmp_path / "tmp")
    w.feed(DATA[100:])
    assert w.commit() and store.has(HOST, OID, len(DATA))


def keep(store: LfsStore, scope: LfsScope, data: bytes = DATA) -> None:
    w = store.writer(scope, hashlib.sha256(data).hexdigest(), len(data))
    w.feed(data)
    assert w.commit()


def test_objects_are_kept_per_lfs_api_and_partition(store: LfsStore) -> None:
    keep(store, HOST)
    for other in (LfsScope("lax.example.com"), LfsScope("git.example.com:8443"),
                  LfsScope("git.example.com", "tenant:abc")):
        assert not store.has(other, OID, len(DATA))  # another API's grant unlocks nothing
    assert store.has(LfsScope("GIT.example.com"), OID, len(DATA))  # host names: any case
    keep(store, LfsScope("git.example.com", "tenant:abc"))
    keep(store, LfsScope("git.example.com", "user:def"))
    keep(store, LfsScope("lax.example.com", "tenant:abc"))
    assert store.copies(HOST, OID) == 3 and store.copies(LfsScope("lax.example.com"), OID) == 1
    assert len(list(store.objects())) == 4
    assert (store.remove(OID) or 0) > 0 and not list(store.objects())


def test_objects_of_the_flat_layout_are_listed_and_evicted_never_answered(
        store: LfsStore, tmp_path: Path) -> None:
    flat = tmp_path / "lfs" / OID[:2] / OID[2:4] / OID
    flat.parent.mkdir(parents=True)
    flat.write_bytes(DATA)
    assert not store.has(HOST, OID, len(DATA))
    [obj] = store.objects()
    assert (obj.oid, obj.origin, obj.path) == (OID, "", flat)
    assert (store.remove_object(obj) or 0) > 0 and not flat.exists()


def test_no_temporary_file_exists_before_the_answer_is_the_object(store: LfsStore) -> None:
    opened: list[int] = []

    def open_writer() -> ObjectWriter:
        opened.append(1)
        return store.writer(HOST, OID, len(DATA))
    t = Transfer(OID, len(DATA), open_writer)  # the href's connection fails: no answer
    assert not t.finish(False) and not opened and not list(store.tmp_dir.iterdir())
    for status, encoding in ((502, None), (200, "gzip")):
        t = Transfer(OID, len(DATA), open_writer)
        t.start(status, encoding)
        assert not t.finish(True) and not opened and not list(store.tmp_dir.iterdir())


def test_an_object_not_kept_is_verified_all_the_same(store: LfsStore) -> None:
    t = Transfer(OID, len(DATA), lambda: None)  # the store does not take it
    t.start(200, None)
    sent = b"".join(b"".join(t.stream(p)) for p in [*pieces(DATA), b""])
    assert sent == DATA and not t.corrupt and not t.finish(True)
    t = Transfer(OID, len(DATA), lambda: None)
    t.start(200, None)
    sent = b"".join(b"".join(t.stream(p)) for p in [*pieces(b"X" + DATA[1:]), b""])
    assert t.corrupt and len(sent) < len(DATA) and not list(store.objects())


def test_one_writer_per_object_and_none_past_the_budget_or_free_space(
        store: LfsStore) -> None:
    first = store.open_writer(HOST, OID, len(DATA))
    assert first is not None
    assert store.open_writer(HOST, OID, len(DATA)) is None  # being written: not again
    assert store.open_writer(LfsScope("other.example"), OID, len(DATA)) is not None
    first.abort()
    again = store.open_writer(HOST, OID, len(DATA))
    assert again is not None
    again.feed(DATA)
    assert again.commit() and store.open_writer(HOST, OID, len(DATA)) is not None
    other = "c" * 64
    assert store.open_writer(HOST, other, 1000, max_bytes=999) is None
    assert store.open_writer(HOST, other, 1000, max_bytes=1000) is not None
    assert store.open_writer(HOST, "d" * 64, 1, min_free=1 << 62) is None


def test_bytes_past_the_object_are_never_sent_on(store: LfsStore) -> None:
    t = Transfer(OID, len(DATA), lambda: None)
    t.start(200, None)
    sent = b"".join(b"".join(t.stream(p)) for p in [*pieces(DATA + b"tail" * 5000), b""])
    assert t.corrupt and len(sent) < len(DATA)
