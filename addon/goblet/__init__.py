"""Goblet for mitmproxy: a caching forward proxy for git smart-HTTP.

Layout: ``protocol/`` pure parsing (no IO), ``auth/`` credentials, tenants and
verdicts, ``cache/`` the bare-repo store and its fills, ``serve/`` the streaming
upload-pack backend, ``policy/`` the rules, ``addon/`` the mitmproxy hooks that
apply them (the one package that imports mitmproxy).
"""

__version__ = "0.1.0"
