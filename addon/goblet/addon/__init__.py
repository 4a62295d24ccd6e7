"""The mitmproxy side of goblet: the only package that imports mitmproxy.

``hooks.py`` holds the addon class (options, life cycle, request and response
hooks), ``connections.py`` its connection-level hooks, ``lfs.py`` the hooks of
Git LFS flows, ``early.py`` the answers goblet gives before a request's body
(which it then never holds). Each guards, asks goblet's policy and applies the
answer. ``headlimit.py`` bounds the request heads mitmproxy buffers.
"""

from goblet.addon.hooks import Goblet, make_addons

__all__ = ["Goblet", "make_addons"]
