"""A fake transport for goblet's own upstream requests (``UpstreamAsker``'s forwarder)."""

from __future__ import annotations

from typing import Any

from goblet.offline.forward import UpstreamAnswer

ADV = "application/x-git-upload-pack-advertisement"


class FakeForwarder:
    """Answers by whether the request carried the client's credential (an exception
    given as the answer is raised); ``sent`` keeps (url, headers), ``bodies`` the bodies."""

    def __init__(self, with_credential: object, without: object) -> None:
        self.answers = {True: with_credential, False: without}
        self.sent: list[tuple[str, list[tuple[str, str]]]] = []
        self.bodies: list[bytes | None] = []

    async def send(self, method: str, url: str, headers: Any, body: bytes | None) -> Any:
        headers = list(headers)
        self.sent.append((url, headers))
        self.bodies.append(body)
        answer = self.answers[any(k.lower() == "authorization" for k, _ in headers)]
        if isinstance(answer, Exception):
            raise answer
        return answer


def answer(status: int, body: bytes = b"", ctype: str = ADV) -> UpstreamAnswer:
    """An upstream answer with this status, body and content type."""
    return UpstreamAnswer(status, "", [("Content-Type", ctype)], body)
