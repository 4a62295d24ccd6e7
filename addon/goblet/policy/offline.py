"""Offline mode's answer to a ref request whose forwarding just failed.

In order:

1. The tenant may be served offline (its latest answer is a grant within the
   grace, the repo is cached): ``upload-pack`` on the cache answers, with the
   ``# service=`` preamble for a v0/v1 ``info/refs`` and with every cache ref
   the tenant's last online answer did not list hidden. A tenant whose refs
   are unknown gets no offline ref answer (a v2 capability advertisement
   lists no refs and needs none).
2. Else, if the upstream refused this credential within the grace, that
   refusal is repeated with its challenge: git's first request is anonymous,
   and a 401 with a challenge makes it retry with the user's credentials.
3. Else the upstream's failed answer itself (a 5xx), or a 502 with a one-line
   reason when there was none.
"""

from __future__ import annotations

from dataclasses import dataclass

from goblet.decide import FetchDecider
from goblet.policy.flows import FlowState, Kind
from goblet.protocol import pktline

SERVICE_PREAMBLE = pktline.encode_line("# service=git-upload-pack") + pktline.FLUSH


@dataclass(frozen=True, slots=True)
class ServeOffline:
    """Answer from the cache: ``advertise`` (info/refs), ``prefix`` first, ``hidden`` refs."""

    advertise: bool
    prefix: bytes
    hidden: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer ``status`` with a one-line ``message`` (and ``challenge``, if any)."""

    status: int
    message: str
    challenge: str | None = None


@dataclass(frozen=True, slots=True)
class PassOn:
    """Pass the upstream's failed answer on as it is."""


OfflineAnswer = ServeOffline | Refuse | PassOn


def offline_ref_answer(decider: FetchDecider, state: FlowState, why: str, *,
                       failed_answer: bool) -> OfflineAnswer:
    """What to answer (see the module docstring)."""
    assert state.repo is not None
    if decider.may_serve_offline(state.tenant, state.repo):
        advertise = state.kind is Kind.INFO_REFS
        hidden: tuple[str, ...] | None = ()
        if not (advertise and state.version == 2):
            hidden = decider.offline_hidden_refs(state.tenant, state.repo)
        if hidden is not None:
            prefix = SERVICE_PREAMBLE if advertise and state.version != 2 else b""
            return ServeOffline(advertise, prefix, hidden)
    denial = decider.verdicts.denied_within(state.tenant, state.repo.url, decider.offline_grace)
    if denial is not None:
        status = denial.status or 403
        return Refuse(status, f"goblet: upstream unreachable; its last answer was {status}",
                      denial.challenge)
    if failed_answer:
        return PassOn()
    return Refuse(502, f"goblet: {why}")
