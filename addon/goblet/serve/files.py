"""Serve one stored file whole (an LFS object) through the loopback backend.

The addon decides *which* file while it holds the flow (after checking that
the client may have it) and registers a FilePlan like a ServePlan; the
backend finds it by its token. The answer has a ``Content-Length``; if the
file cannot be read to the end, the connection is aborted mid-body, so a
short file never looks complete.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import h11

from goblet.git.runner import READ_CHUNK
from goblet.serve.plans import ServeStats

GONE = b"goblet: this object is no longer cached, retry\n"


@dataclass(frozen=True, slots=True)
class FilePlan:
    """Send ``path`` (``size`` bytes) as ``content_type``; ``label`` names it in logs."""

    path: Path
    size: int
    content_type: str
    label: str
    stats: ServeStats = field(default_factory=ServeStats)
    repo_key: str = ""


async def send_file(conn: h11.Connection, writer: asyncio.StreamWriter, plan: FilePlan,
                    method: bytes) -> bool:
    """Answer ``plan``; True if the connection may be reused."""
    stats = plan.stats
    try:
        f = plan.path.open("rb")
    except OSError:
        stats.error = "stored object vanished"
        writer.write(conn.send(h11.Response(status_code=404, headers=[
            (b"Content-Type", b"text/plain"), (b"Content-Length", str(len(GONE)).encode())]))
            or b"")
        writer.write(conn.send(h11.Data(data=GONE)) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()
        return True
    with f:
        writer.write(conn.send(h11.Response(status_code=200, headers=[
            (b"Content-Type", plan.content_type.encode()),
            (b"Content-Length", str(plan.size).encode())])) or b"")
        try:
            left = plan.size if method != b"HEAD" else 0
            while left > 0:
                chunk = await asyncio.to_thread(f.read, min(READ_CHUNK, left))
                if not chunk:
                    raise OSError("stored object shorter than its size")
                left -= len(chunk)
                writer.write(conn.send(h11.Data(data=chunk)) or b"")
                stats.bytes_sent += len(chunk)
                await writer.drain()
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
        except (ConnectionError, OSError) as e:
            stats.error = f"{e.__class__.__name__}: {e}"
            writer.transport.abort()
            return False
    stats.complete = True
    return True
