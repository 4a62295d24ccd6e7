"""Fixtures the policy tests share."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    """The inspector: one worker thread for decoding and parsing off the event loop."""
    with ThreadPoolExecutor(1) as executor:
        yield executor
