"""Git LFS clones side by side: straight from the upstream, through goblet cold and warm.

    python -m bench.lfs [--files 4] [--file-mib 4] [--rate-mbit 100] [--rounds 3] [--json F]

One session: the HTTPS git upstream and the test LFS server (objects on a separate media
host, paced to ``--rate-mbit`` as a WAN would be), a real mitmdump with goblet. Each round
clones one LFS repo with the real git-lfs client three ways, in this order:

* ``direct``: git and git-lfs straight to the servers;
* ``cold``: through goblet's path-prefix port with goblet's LFS store emptied first (every
  object comes from the media host once, verified and stored on the way);
* ``warm``: through goblet again (every object from the store).

Wall time is measured around ``git clone`` only; each run records the LFS bytes the media
host sent. The table printed at the end shows medians; ``--json`` keeps every run.
(git-lfs never proxies loopback addresses, hence the path-prefix port.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.gitclient import GitClient
from tests.support.lfs_repos import lfs_config, make_lfs_repo
from tests.support.lfs_server import LfsServer
from tests.support.net import free_port
from tests.support.proxy import GobletProxy, ensure_ca
from tests.support.upstream_client import UpstreamServer

CONFIG: dict[str, Any] = {
    "users": {"alice": {"password": "alice-pw", "tokens": ["tok-alice"]}},
    "repos": {"lfs.git": {"public": False, "readers": ["alice"], "writers": ["alice"]}},
}
AUTH = "Bearer tok-alice"
SCENARIOS = ("direct", "cold", "warm")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m bench.lfs", description=__doc__.split("\n")[0])
    p.add_argument("--files", type=int, default=4, help="LFS files in the repo (default 4)")
    p.add_argument("--file-mib", type=float, default=4, help="MiB per file (default 4)")
    p.add_argument("--rate-mbit", type=float, default=100,
                   help="media host throughput in Mbit/s, 0: unpaced (default 100)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    p.add_argument("--json", type=Path, help="write every run to this file")
    return p.parse_args(argv)


def clone(git: GitClient, url: str, lfs_url: str, dest: Path) -> float:
    """Seconds one ``git clone`` with git-lfs took."""
    start = time.perf_counter()
    git.clone(url, dest, config=lfs_config(lfs_url, AUTH))
    return time.perf_counter() - start


def run(args: argparse.Namespace, work: Path) -> dict[str, list[dict[str, float]]]:
    """Every timed run, by scenario."""
    results: dict[str, list[dict[str, float]]] = {s: [] for s in SCENARIOS}
    with UpstreamServer(work / "upstream", CONFIG) as upstream, \
            LfsServer(upstream.cert_path, upstream.cert_dir / "upstream-key.pem",
                      lambda: CONFIG) as lfs:
        lfs.media_rate = args.rate_mbit * 1e6 / 8
        size = int(args.file_mib * 1024 * 1024)
        files = {f"f{i}.bin": os.urandom(size) for i in range(args.files)}
        for content in files.values():
            lfs.add(content)
        make_lfs_repo(upstream.root / "lfs.git", files)
        confdir = work / "confdir"
        ensure_ca(confdir)
        port = free_port()
        with GobletProxy(work / "proxy", hosts=[upstream.host, lfs.api_host],
                         upstream_ca=upstream.cert_path, confdir=confdir,
                         sets={"goblet_prefix_port": str(port),
                               "goblet_relay_internal": "on"}) as proxy:
            direct = GitClient(work / "home-direct", ca_file=upstream.cert_path)
            via = GitClient(work / "home-goblet", ca_file=proxy.ca_cert)
            prefix = f"http://127.0.0.1:{port}"
            ways = {
                "direct": (direct, upstream.url("lfs.git"), lfs.lfs_url("lfs.git")),
                "cold": (via, f"{prefix}/{upstream.host}/lfs.git",
                         f"{prefix}/{lfs.api_host}/lfs.git/info/lfs"),
            }
            ways["warm"] = ways["cold"]
            for i in range(args.rounds + 1):  # round 0 warms up, untimed
                for scenario in SCENARIOS:
                    if scenario == "cold":
                        shutil.rmtree(proxy.cache_dir / "lfs", ignore_errors=True)
                        (proxy.cache_dir / "lfs").mkdir()
                    git, url, lfs_url = ways[scenario]
                    dest = work / f"clone-{scenario}-{i}"
                    lfs.reset_counters()
                    seconds = clone(git, url, lfs_url, dest)
                    if any((dest / n).read_bytes() != c for n, c in files.items()):
                        raise SystemExit(f"{scenario}: the checkout differs from the files")
                    shutil.rmtree(dest)
                    if i:
                        results[scenario].append({"seconds": seconds,
                                                  "upstream_lfs_bytes": lfs.media_bytes})
    return results


def table(results: dict[str, list[dict[str, float]]]) -> str:
    """Medians side by side."""
    direct = statistics.median(r["seconds"] for r in results["direct"])
    lines = [f"{'scenario':<8} {'median s':>9} {'vs direct':>10} {'upstream LFS bytes':>19}"]
    for scenario, runs in results.items():
        secs = statistics.median(r["seconds"] for r in runs)
        upstream = int(statistics.median(r["upstream_lfs_bytes"] for r in runs))
        lines.append(f"{scenario:<8} {secs:>9.2f} {secs / direct:>9.2f}x {upstream:>19}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the LFS benchmark; print the table (and write ``--json``)."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="goblet-bench-lfs-") as tmp:
        results = run(args, Path(tmp))
    print(f"LFS clone: {args.files} file(s) of {args.file_mib:g} MiB, media host "
          f"{args.rate_mbit:g} Mbit/s, {args.rounds} round(s)")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
