"""mitmproxy's hook events, dispatched in one loop with mitmproxy's own rules.

mitmproxy 11 sends each hook event to every addon through a stack of generators,
one coroutine and one context manager per addon (``AddonManager.trigger_event``),
and sends every flow event twice (the event, then ``update``). mitmdump loads
36 addons: on small git requests (``info/refs``, ``ls-refs``) that dispatch took a
quarter to a third of the proxy's CPU (``docs/benchmarks.md``). ``install`` replaces
``AddonManager.trigger_event`` with :func:`trigger_event`, which keeps mitmproxy's
rules:

- each addon of the chain in order, each followed by its nested ``addons`` (a
  script's), read after the addon's own hook ran, as mitmproxy's walk reads them;
- an attribute named like the event is called with the event's arguments, and
  awaited if it returns an awaitable; a module of that name is skipped; anything
  else that is not callable is an error;
- an exception from one top-level addon's tree ends that tree's turn and is
  logged as mitmproxy logs it (``Addon error: …``, with the addon's traceback);
  the next top-level addon still gets the event. ``AddonHalt`` ends the event's
  dispatch, ``OptionsError`` and every ``BaseException`` that is not an
  ``Exception`` propagate to the caller.

The parts of mitmproxy's dispatch another addon could wrap or override
(``invoke_addon``, ``_iter_hooks``, on the class or on the manager itself,
``traverse``, ``safecall``) are honoured: while any of them is not mitmproxy's own,
or an event's arguments cannot be read, the event goes through mitmproxy's own
dispatch.
``uninstall`` puts mitmproxy's own back (``goblet_fast_dispatch=off``, or goblet
unloaded). If mitmproxy's ``AddonManager`` is not the one this was written for,
nothing is replaced and ``install`` says why.
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Iterator
from typing import Any

from mitmproxy import addonmanager, exceptions, hooks, version

_END = object()
_MANAGER = addonmanager.AddonManager


def _parts(manager: type) -> tuple[Any, ...]:
    """The parts of mitmproxy's dispatch an addon could wrap or override."""
    return (getattr(manager, "invoke_addon", None), getattr(manager, "_iter_hooks", None),
            getattr(addonmanager, "traverse", None), getattr(addonmanager, "safecall", None))


# mitmproxy's own trigger_event and parts (as ``install`` last found them)
_MITMPROXY: dict[str, Any] = {"trigger": _MANAGER.trigger_event, "parts": _parts(_MANAGER)}
_NAMES = ("AddonManager.trigger_event", "AddonManager.invoke_addon",
          "AddonManager._iter_hooks", "traverse", "safecall")


def _own(part: Any, qualname: str) -> bool:
    """Whether ``part`` is mitmproxy's own ``qualname`` (``safecall`` is a context
    manager: the function it wraps must be mitmproxy's own; nothing else wraps)."""
    if qualname == "safecall":
        part = getattr(part, "__wrapped__", None)
    return (getattr(part, "__module__", None) == addonmanager.__name__
            and getattr(part, "__qualname__", None) == qualname
            and not hasattr(part, "__wrapped__"))


async def trigger_event(self: Any, event: hooks.Hook) -> None:
    """``AddonManager.trigger_event``: ``event`` to every addon (module docstring)."""
    try:
        own = self.__dict__  # (a part wrapped on the manager itself counts too)
        ours = _parts(type(self)) == _MITMPROXY["parts"] and "invoke_addon" not in own \
            and "_iter_hooks" not in own
        name, args = event.name, event.args()
    except Exception:  # noqa: BLE001 (an event goblet cannot read: mitmproxy's own decides)
        ours = False
    if not ours:  # (or an addon wrapped a part of mitmproxy's: its own honours that)
        await _MITMPROXY["trigger"](self, event)
        return
    for top in self.chain:
        try:
            if (func := getattr(top, name, None)) and (
                    res := _invoke(top, name, func, args)) is not None \
                    and inspect.isawaitable(res):
                await res
            if hasattr(top, "addons"):
                await _nested(iter(top.addons), name, args)
        except exceptions.AddonHalt:
            return
        except exceptions.OptionsError:
            raise
        except Exception:  # noqa: BLE001 (an addon's error, logged as mitmproxy does)
            _log_addon_error()


async def _nested(first: Iterator[Any], name: str, args: list[Any]) -> None:
    """The hooks of nested addons, depth first (an addon before its own ``addons``)."""
    todo = [first]
    while todo:
        addon = next(todo[-1], _END)
        if addon is _END:
            todo.pop()
            continue
        if (func := getattr(addon, name, None)) and (
                res := _invoke(addon, name, func, args)) is not None \
                and inspect.isawaitable(res):
            await res
        if hasattr(addon, "addons"):
            todo.append(iter(addon.addons))


def _invoke(addon: object, name: str, func: Any, args: list[Any]) -> Any:
    """What ``addon``'s hook ``func`` returns (None for a module of the hook's name)."""
    if callable(func):
        return func(*args)
    if isinstance(func, types.ModuleType):  # (a module imported under a hook's name)
        return None
    raise exceptions.AddonManagerError(f"Addon handler {name} ({addon}) not callable")


def _log_addon_error() -> None:
    """Log the exception being handled as mitmproxy's ``safecall`` does: from the
    addon's own frame on (from where this module raised it, if it did)."""
    etype, value, tb = sys.exc_info()
    assert etype is not None and value is not None
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_globals is globals():
        tb = tb.tb_next
    if isinstance(value, StopIteration):  # (what leaving mitmproxy's coroutine makes of it)
        error = RuntimeError("coroutine raised StopIteration")
        error.__cause__, etype, value = value, RuntimeError, error
    addonmanager.logger.error(f"Addon error: {value}", exc_info=(etype, value, tb))


def installed() -> bool:
    """Whether :func:`trigger_event` is the one mitmproxy calls."""
    return _MANAGER.trigger_event is trigger_event


def install() -> str | None:
    """Dispatch with :func:`trigger_event` (idempotent); None when done, else why not."""
    current = _MANAGER.trigger_event
    if current is trigger_event:
        return None
    if not version.VERSION.startswith("11."):
        return f"written for mitmproxy 11's AddonManager, not {version.VERSION}'s"
    parts = _parts(_MANAGER)
    if not all(_own(part, name) for part, name in zip((current, *parts), _NAMES, strict=True)):
        return "another addon replaced part of mitmproxy's hook dispatch"
    names = set(getattr(getattr(current, "__code__", None), "co_names", ()))
    if not names.issuperset(("invoke_addon", "safecall", "AddonHalt")) or not hasattr(
            addonmanager, "logger"):
        return "mitmproxy's AddonManager has another layout"
    _MITMPROXY.update(trigger=current, parts=parts)
    _MANAGER.trigger_event = trigger_event  # type: ignore[method-assign]
    return None


def uninstall() -> None:
    """mitmproxy's own dispatch again (idempotent)."""
    if installed():
        _MANAGER.trigger_event = _MITMPROXY["trigger"]  # type: ignore[method-assign]
