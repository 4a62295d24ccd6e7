"""``test_redteam_proven`` again with ``goblet_refs_ttl=60s``: ref requests answered from the
cache change nothing any of its attackers can get."""

from tests.e2e.test_redteam_proven import *  # noqa: F403 (the same tests, collected here again)

PROXY_SETS = {"goblet_refs_ttl": "60s"}
