"""Decisions about flows, without mitmproxy: what a request is, what an answer proves,
what an offline answer looks like, how a request ended. The addon's hooks ask these
and apply the answers to mitmproxy's flows."""
