"""What a raw upload-pack answer carries: its pack, and every object in it, read by git."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from tests.support.repos import clean_env


def v2_pack(answer: bytes) -> bytes:
    """The pack in a protocol v2 fetch answer (side-band 1 of its ``packfile`` section);
    b"" if it has none."""
    pack, i, in_pack = bytearray(), 0, False
    while i + 4 <= len(answer):
        size = int(answer[i:i + 4], 16)
        if size < 4:  # flush, delim or response-end
            i += 4
            continue
        payload = answer[i + 4:i + size]
        i += size
        if not in_pack:
            in_pack = payload == b"packfile\n"
        elif payload[:1] == b"\x01":
            pack += payload[1:]
    return bytes(pack)


def objects_in(pack: bytes) -> dict[str, tuple[str, bytes]]:
    """Every object of ``pack``: oid -> (type, content), as ``git cat-file`` reads them
    once ``git index-pack`` made the pack a repo's."""
    if not pack:
        return {}
    with tempfile.TemporaryDirectory(prefix="goblet-pack-") as tmp:
        repo = Path(tmp) / "r.git"
        env = clean_env()
        subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True, env=env)
        subprocess.run(["git", "index-pack", "--stdin"], input=pack, cwd=repo, check=True,
                       env=env, capture_output=True)
        out = subprocess.run(["git", "cat-file", "--batch-all-objects", "--batch"], cwd=repo,
                             check=True, env=env, capture_output=True).stdout
    objects: dict[str, tuple[str, bytes]] = {}
    while out:
        header, _, rest = out.partition(b"\n")
        oid, kind, size = header.decode().split()
        objects[oid] = (kind, rest[:int(size)])
        out = rest[int(size) + 1:]
    return objects
