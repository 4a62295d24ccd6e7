"""The real git client, run with an explicit, isolated environment.

``GIT_SSL_CAINFO`` is exported machine-wide on these machines and overrides
``http.sslCAInfo``, so every call sets it explicitly; no ambient proxy
variable, global config or credential helper leaks in.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit


def with_userinfo(url: str, user: str, password: str) -> str:
    """``url`` with ``user:password@`` added (git sends it after a 401 challenge)."""
    parts = urlsplit(url)
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.netloc}"
    return urlunsplit(parts._replace(netloc=netloc))


class GitClient:
    """Runs git through a proxy (or directly), trusting exactly ``ca_file``."""

    def __init__(self, home: Path, *, ca_file: Path, proxy: str | None = None) -> None:
        self.home = home
        self.ca_file = ca_file
        self.proxy = proxy
        home.mkdir(parents=True, exist_ok=True)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of one git call."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "LANG": "C",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "",
            "SSH_ASKPASS": "",
            "GIT_SSL_CAINFO": str(self.ca_file),
            "GIT_AUTHOR_NAME": "Test",
            "GIT_AUTHOR_EMAIL": "test@example.invalid",
            "GIT_COMMITTER_NAME": "Test",
            "GIT_COMMITTER_EMAIL": "test@example.invalid",
        }
        if self.proxy:
            env["HTTPS_PROXY"] = self.proxy
            env["https_proxy"] = self.proxy
            env["NO_PROXY"] = ""
            env["no_proxy"] = ""
        if extra:
            env.update(extra)
        return env

    def run(
        self,
        *args: str,
        cwd: Path | None = None,
        check: bool = True,
        timeout: float = 180,
        config: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``git [-c CONFIG]... ARGS``; raise with git's stderr when ``check`` fails."""
        cmd = ["git"]
        for item in config:
            cmd += ["-c", item]
        cmd += list(args)
        res = subprocess.run(
            cmd,
            cwd=cwd or self.home,
            env=self.env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"git {' '.join(args)} failed ({res.returncode}):\n{res.stderr[-3000:]}"
            )
        return res

    def clone(
        self, url: str, dest: Path, *extra: str, config: Sequence[str] = (), check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``git clone [EXTRA] URL DEST``."""
        return self.run("clone", *extra, url, str(dest), config=config, check=check)

    def refs(self, repo: Path) -> dict[str, str]:
        """refname → oid of every ref in a (clone or bare) repo."""
        out = self.run("for-each-ref", "--format=%(objectname) %(refname)", cwd=repo).stdout
        return {name: oid for oid, name in (line.split(" ", 1) for line in out.splitlines())}

    def fsck(self, repo: Path) -> None:
        """Raise if ``git fsck --full`` finds a problem."""
        self.run("fsck", "--full", "--no-dangling", cwd=repo)
