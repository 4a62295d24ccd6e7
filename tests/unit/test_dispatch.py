"""goblet's hook dispatch does what mitmproxy's own does, addon for addon.

Every case runs the same addon tree through mitmproxy's ``trigger_event`` and through
goblet's, and compares the calls the addons saw, the errors mitmproxy's logger got
(message, and the frames of their traceback outside the two dispatches) and what the
caller saw.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from goblet.addon import dispatch
from goblet.addon.hooks import Goblet
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import addonmanager, exceptions, hooks, version
from mitmproxy.test import taddons, tflow

ORIGINAL = addonmanager.AddonManager.trigger_event


@pytest.fixture(autouse=True)
def mitmproxy_dispatch() -> Iterator[None]:
    """Each test starts and ends with mitmproxy's own dispatch in place."""
    dispatch.uninstall()
    assert addonmanager.AddonManager.trigger_event is ORIGINAL
    yield
    dispatch.uninstall()


class Addon:
    """An addon whose ``update`` hook does ``act``; ``children``, if given, become its
    nested ``addons``."""

    def __init__(self, label: str, calls: list[str], act: str = "ok",
                 children: list[Any] | None = None) -> None:
        self.label, self.calls, self.act = label, calls, act
        self.siblings: list[Any] = []  # (the list this addon is nested in, if any)
        if children is not None:
            self.addons = children
        hook: Any = {"async": self._async_update, "async-raise": self._async_update,
                     "noncallable": 5, "module": types.ModuleType("update"), "falsy": None,
                     }.get(act, self._update)
        if act != "absent":
            self.update = hook

    def _update(self, flows: list[Any]) -> Any:
        self.calls.append(f"{self.label}:{len(flows)}")
        kids = getattr(self, "addons", None)
        if self.act == "raise":
            raise ValueError(f"boom in {self.label}")
        if self.act == "halt":
            raise exceptions.AddonHalt()
        if self.act == "options":
            raise exceptions.OptionsError(f"bad option in {self.label}")
        if self.act == "stop":
            raise StopIteration(self.label)
        if self.act == "cancel":
            raise asyncio.CancelledError(self.label)
        if self.act == "grow" and kids is not None:
            # a child added by the hook itself: both walks read `addons` after the hook
            kids.append(Addon(f"{self.label}+", self.calls))
        if self.act == "shrink" and kids:
            del kids[0]
        if self.act == "prune" and len(siblings := getattr(self, "siblings", [])) > 1:
            siblings.pop()  # (a later sibling, while the walk goes through the list)
        if self.act == "future":  # an awaitable that is not a coroutine
            future = asyncio.get_running_loop().create_future()

            def done() -> None:
                self.calls.append(f"{self.label}:done")
                future.set_result(1)
            asyncio.get_running_loop().call_soon(done)
            return future
        return 5 if self.act == "number" else None

    async def _async_update(self, flows: list[Any]) -> None:
        await asyncio.sleep(0)
        self.calls.append(f"{self.label}:async:{len(flows)}")
        if self.act == "async-raise":
            raise KeyError(f"async boom in {self.label}")

    def __repr__(self) -> str:
        return f"Addon({self.label})"


class BrokenAddons(Addon):
    """An addon whose ``addons`` cannot be read."""

    @property
    def addons(self) -> list[Any]:
        raise ValueError(f"no addons in {self.label}")

    @addons.setter
    def addons(self, value: list[Any]) -> None:
        pass


class _Capture(logging.Handler):
    """Errors mitmproxy's addon logger got."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


INTERNAL = ("/mitmproxy/addonmanager.py", "/goblet/addon/dispatch.py", "/contextlib.py",
            "/asyncio/")
Outcome = tuple[list[str], list[tuple[str, tuple[str, ...]]], str]


def outcome(build: Callable[[list[str]], list[Any]], trigger: Any) -> Outcome:
    """(calls, (message, traceback frames outside the dispatch) of each error
    mitmproxy's addon logger got, what the caller saw) of one dispatch of an
    ``update`` event to the chain ``build`` makes."""
    calls: list[str] = []
    capture = _Capture()
    addonmanager.logger.addHandler(capture)
    try:
        with taddons.context() as tctx:
            manager = tctx.master.addons
            manager.chain = build(calls)
            try:
                asyncio.run(trigger(manager, hooks.UpdateHook([tflow.tflow(), tflow.tflow()])))
                raised = "-"
            except (exceptions.OptionsError, asyncio.CancelledError) as e:
                raised = f"{type(e).__name__}: {e}"
    finally:
        addonmanager.logger.removeHandler(capture)
    errors = []
    for r in capture.records:
        assert r.exc_info is not None
        frames = tuple(f.name for f in traceback.extract_tb(r.exc_info[2])
                       if not any(part in f.filename for part in INTERNAL))
        errors.append((r.getMessage(), frames))
    return calls, errors, raised


def same(build: Callable[[list[str]], list[Any]]) -> Outcome:
    """What both dispatches did (the same, or the test fails)."""
    mitmproxy = outcome(build, ORIGINAL)
    goblet = outcome(build, dispatch.trigger_event)
    assert (goblet[0], goblet[2]) == (mitmproxy[0], mitmproxy[2])
    # (mitmproxy's StopIteration error carries its frames in its cause alone)
    assert [(m, () if "StopIteration" in m else f) for m, f in goblet[1]] == [
        (m, () if "StopIteration" in m else f) for m, f in mitmproxy[1]]
    return goblet


def test_every_addon_in_order_with_its_nested_addons_after_it() -> None:
    def build(calls: list[str]) -> list[Any]:
        return [Addon("a", calls), Addon("b", calls, "absent", children=[
            Addon("b1", calls, children=[Addon("b1x", calls)]), Addon("b2", calls)]),
            Addon("c", calls, "async")]
    calls, errors, raised = same(build)
    assert calls == ["a:2", "b1:2", "b1x:2", "b2:2", "c:async:2"]
    assert errors == [] and raised == "-"


def test_nested_addons_are_read_after_the_hook_that_may_change_them() -> None:
    calls, _, _ = same(lambda calls: [Addon("p", calls, "grow", children=[])])
    assert calls == ["p:2", "p+:2"]


def test_nested_addons_are_walked_as_their_list_is_while_hooks_change_it() -> None:
    def build(calls: list[str]) -> list[Any]:
        kids = [Addon("k0", calls, "prune"), Addon("k1", calls), Addon("k2", calls)]
        for kid in kids:
            kid.siblings = kids
        return [Addon("p", calls, children=kids)]
    calls, _, _ = same(build)
    assert calls == ["p:2", "k0:2", "k1:2"]  # (k0 took k2 out before the walk reached it)


def test_an_error_ends_its_own_tree_only_and_is_logged_from_the_addons_frame() -> None:
    def build(calls: list[str]) -> list[Any]:
        return [Addon("t", calls, children=[Addon("t1", calls, "raise"), Addon("t2", calls)]),
                Addon("u", calls, "async-raise"), Addon("v", calls, "noncallable"),
                Addon("w", calls, "module"), Addon("x", calls, "falsy"), Addon("y", calls)]
    calls, errors, raised = same(build)
    assert calls == ["t:2", "t1:2", "u:async:2", "y:2"]
    assert [(m, f[-1:]) for m, f in errors] == [
        ("Addon error: boom in t1", ("_update",)),
        ("Addon error: 'async boom in u'", ("_async_update",)),
        ("Addon error: Addon handler update (Addon(v)) not callable", ())]
    assert raised == "-"


def test_halt_ends_the_dispatch_and_options_errors_reach_the_caller() -> None:
    calls, _, raised = same(lambda calls: [
        Addon("a", calls), Addon("h", calls, "halt"), Addon("z", calls)])
    assert calls == ["a:2", "h:2"] and raised == "-"
    calls, _, raised = same(lambda calls: [
        Addon("a", calls, children=[Addon("o", calls, "options")]), Addon("z", calls)])
    assert calls == ["a:2", "o:2"] and raised == "OptionsError: bad option in o"


ACTS = ("ok", "async", "raise", "async-raise", "halt", "noncallable", "module", "falsy",
        "absent", "grow", "shrink", "prune", "stop", "cancel", "future", "number", "broken")


@st.composite
def trees(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """A chain of up to 5 addons, each with up to 3 nested levels of children."""
    node = st.deferred(lambda: st.tuples(st.sampled_from(ACTS), st.one_of(
        st.none(), st.lists(node, max_size=3))))
    return draw(st.lists(node, max_size=5))


def built(shape: list[tuple[str, Any]]) -> Callable[[list[str]], list[Any]]:
    def build(calls: list[str]) -> list[Any]:
        def make(path: str, spec: tuple[str, Any]) -> Addon:
            act, kids = spec
            children: list[Any] | None = None if kids is None else [
                make(f"{path}.{i}", k) for i, k in enumerate(kids)]
            for child in children or ():
                child.siblings = children
            return (BrokenAddons if act == "broken" else Addon)(path, calls, act, children)
        return [make(str(i), spec) for i, spec in enumerate(shape)]
    return build


@settings(max_examples=150, deadline=None)
@given(trees())
def test_any_addon_tree_sees_the_same_dispatch(shape: list[tuple[str, Any]]) -> None:
    same(built(shape))


def test_install_replaces_and_uninstall_restores_mitmproxys_own() -> None:
    assert not dispatch.installed()
    assert dispatch.install() is None and dispatch.installed()
    assert addonmanager.AddonManager.trigger_event is dispatch.trigger_event
    assert dispatch.install() is None  # idempotent
    dispatch.uninstall()
    assert addonmanager.AddonManager.trigger_event is ORIGINAL and not dispatch.installed()
    dispatch.uninstall()  # idempotent
    assert addonmanager.AddonManager.trigger_event is ORIGINAL


def test_another_mitmproxy_keeps_its_own_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(version, "VERSION", "12.0.0")
    assert "not 12.0.0's" in (dispatch.install() or "")
    assert addonmanager.AddonManager.trigger_event is ORIGINAL
    monkeypatch.undo()

    async def other(self: Any, event: hooks.Hook) -> None:
        """A trigger_event of another layout."""
    monkeypatch.setattr(addonmanager.AddonManager, "trigger_event", other)
    assert dispatch.install() is not None
    assert addonmanager.AddonManager.trigger_event is other


def dispatched(event: hooks.Hook, *addons: object) -> None:
    """``event`` sent by a manager whose chain is ``addons``, with whatever dispatch is
    in place."""
    with taddons.context() as tctx:
        tctx.master.addons.chain = list(addons)
        asyncio.run(tctx.master.addons.trigger_event(event))


def test_a_part_of_mitmproxys_dispatch_another_addon_wraps_is_honoured(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    inner = addonmanager.AddonManager.invoke_addon

    async def timed(self: Any, addon: Any, event: hooks.Hook) -> None:  # (a profiler's)
        seen.append(event.name)
        await inner(self, addon, event)

    calls: list[str] = []
    monkeypatch.setattr(addonmanager.AddonManager, "invoke_addon", timed)
    assert "another addon" in (dispatch.install() or "")  # wrapped before: refused
    monkeypatch.undo()
    assert dispatch.install() is None
    monkeypatch.setattr(addonmanager.AddonManager, "invoke_addon", timed)  # wrapped after
    dispatched(hooks.UpdateHook([tflow.tflow()]), Addon("a", calls))
    assert seen == ["update"] and calls == ["a:1"]
    monkeypatch.undo()
    dispatched(hooks.UpdateHook([tflow.tflow()]), Addon("a", calls))
    assert seen == ["update"] and calls == ["a:1", "a:1"]  # (goblet's own again)
    with taddons.context() as tctx:  # wrapped on the manager itself
        manager = tctx.master.addons
        manager.chain = [Addon("b", calls)]
        manager.invoke_addon = types.MethodType(timed, manager)
        asyncio.run(manager.trigger_event(hooks.UpdateHook([tflow.tflow()])))
    assert seen == ["update", "update"] and calls[-1] == "b:1"


def test_install_takes_mitmproxys_own_back_once_another_addon_let_go(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def wrapper(self: Any, event: hooks.Hook) -> None:
        await ORIGINAL(self, event)
    monkeypatch.setattr(addonmanager.AddonManager, "trigger_event", wrapper)
    assert "another addon" in (dispatch.install() or "")
    monkeypatch.undo()
    assert dispatch.install() is None and dispatch.installed()
    dispatch.uninstall()
    assert addonmanager.AddonManager.trigger_event is ORIGINAL


class Unreadable(hooks.UpdateHook):
    """An event whose arguments cannot be read."""

    name = "goblet_test_unreadable"

    def args(self) -> list[Any]:
        raise ValueError("unreadable")


def test_an_event_whose_arguments_cannot_be_read_goes_to_mitmproxys_own() -> None:
    got = []
    for trigger in (ORIGINAL, dispatch.trigger_event):
        calls: list[str] = []
        chain = [Addon("a", calls), Addon("b", calls)]
        for addon in chain:
            setattr(addon, Unreadable.name, addon.update)
        capture = _Capture()
        addonmanager.logger.addHandler(capture)
        try:
            with taddons.context() as tctx:
                tctx.master.addons.chain = chain
                asyncio.run(trigger(tctx.master.addons, Unreadable([])))
        finally:
            addonmanager.logger.removeHandler(capture)
        got.append(([r.getMessage() for r in capture.records], calls))
    assert got[0] == got[1] == (["Addon error: unreadable"] * 2, [])


def test_the_option_switches_the_live_dispatch(tmp_path: Path) -> None:
    addon = Goblet()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, goblet_cache_dir=str(tmp_path / "cache"))
        assert dispatch.installed()  # on by default
        tctx.configure(addon, goblet_fast_dispatch="off")
        assert addonmanager.AddonManager.trigger_event is ORIGINAL
        tctx.configure(addon, goblet_fast_dispatch="on")
        assert dispatch.installed()
