"""PackDemux on real upload-pack answers: whole, byte by byte, cut anywhere, with errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from goblet.protocol import pktline
from goblet.protocol.errors import ProtocolError
from goblet.protocol.response import Ending, PackDemux

from tests.support.repos import clean_env, git, make_bare_repo


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("answers")
    repo = root / "r.git"
    make_bare_repo(repo, commits=6, branches=("main", "dev"), tags=("v1",))
    main = git("rev-parse", "refs/heads/main", cwd=repo)
    dev = git("rev-parse", "refs/heads/dev", cwd=repo)
    v2 = (pktline.encode_line("command=fetch") + pktline.DELIM
          + pktline.encode_line(f"want {main}") + pktline.encode_line(f"want {dev}")
          + pktline.encode_line("ofs-delta") + pktline.encode_line("done") + pktline.FLUSH)
    v0 = (pktline.encode_line(f"want {main} side-band-64k ofs-delta")
          + pktline.encode_line(f"want {dev}") + pktline.FLUSH + pktline.encode_line("done"))
    out = {}
    for name, body, proto in (("v2", v2, "version=2"), ("v0", v0, "")):
        env = clean_env({"GIT_PROTOCOL": proto} if proto else None)
        out[name] = subprocess.run(["git", "upload-pack", "--stateless-rpc", str(repo)],
                                   input=body, capture_output=True, env=env, check=True).stdout
    return out


def pack_of(answer: bytes, version: int, step: int | None = None) -> tuple[bytes, Ending]:
    demux = PackDemux(version)
    pieces = [answer] if step is None else [answer[i:i + step]
                                            for i in range(0, len(answer), step)]
    pack = b"".join(demux.feed(p) for p in pieces)
    return pack, demux.close()


def index_pack(pack: bytes, where: Path) -> None:
    where.mkdir()
    git("init", "-q", "--bare", ".", cwd=where)
    git("index-pack", "--stdin", "--check-self-contained-and-connected", cwd=where, input=pack)


@pytest.mark.parametrize(("name", "version"), [("v2", 2), ("v0", 0)])
@pytest.mark.parametrize("step", [None, 1, 7, 4096])
def test_the_pack_comes_out_whole(answers: dict[str, bytes], name: str, version: int,
                                  step: int | None, tmp_path: Path) -> None:
    pack, ending = pack_of(answers[name], version, step)
    assert pack.startswith(b"PACK") and ending.complete
    assert ending.pack_bytes == len(pack)
    index_pack(pack, tmp_path / "idx")


@pytest.mark.parametrize(("name", "version"), [("v2", 2), ("v0", 0)])
def test_an_answer_cut_anywhere_is_incomplete(answers: dict[str, bytes], name: str,
                                              version: int) -> None:
    answer = answers[name]
    for cut in range(0, len(answer), max(1, len(answer) // 97)):
        _, ending = pack_of(answer[:cut], version)
        assert not ending.complete, cut
    _, ending = pack_of(answer[:-1], version)
    assert not ending.complete


def test_trailing_data_after_the_flush_is_refused(answers: dict[str, bytes]) -> None:
    demux = PackDemux(2)
    demux.feed(answers["v2"])
    with pytest.raises(ProtocolError):
        demux.feed(b"0005x")
    assert not demux.close().complete


@pytest.mark.parametrize("tail", [
    pktline.encode_data(b"\x03fatal: out of memory\n") + pktline.FLUSH,
    pktline.error_packet("upload-pack: not our ref") + pktline.FLUSH,
    pktline.encode_data(b"\x05what\n") + pktline.FLUSH,
])
def test_errors_inside_the_answer_make_it_incomplete(tail: bytes) -> None:
    demux = PackDemux(2)
    demux.feed(pktline.encode_line("packfile") + pktline.encode_data(b"\x01PACK"))
    demux.feed(tail)
    ending = demux.close()
    assert not ending.complete and ending.reason


def test_an_answer_without_a_packfile_section_is_incomplete() -> None:
    demux = PackDemux(2)
    demux.feed(pktline.encode_line("acknowledgments") + pktline.encode_line("NAK")
               + pktline.FLUSH)
    assert not demux.close().complete


def test_not_pkt_lines_at_all_is_the_upstreams_fault() -> None:
    with pytest.raises(ProtocolError) as err:
        PackDemux(2).feed(b"<html>oops</html>")
    assert err.value.culprit == "upstream"
