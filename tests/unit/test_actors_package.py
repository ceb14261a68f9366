"""Tests of the actors package's shape: pykka's private parts, lazy imports, the typed
shared context and the engine seam."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pykka
import pytest
from pykka import messages as pykka_messages

import modcoord.actors
from modcoord.actors import _pykka
from modcoord.actors._base import ActorContext, ActorHandle, Statistics
from modcoord.actors.cache import CacheActor, Put
from modcoord.actors.clock import MockClock
from modcoord.actors.settings import CacheSettings, ModeSettings
from modcoord.actors.shared import Shared, no_sink
from modcoord.supervisor.daemon.config import load_config_dir
from modcoord.supervisor.daemon.coordinator import LocalEngine, ModuleCoordinator
from modcoord.supervisor.daemon.engine import Registration, create_engine

ACTORS_DIR = Path(modcoord.actors.__file__).parent
HEAVY = ("pykka", "pydantic", "loguru", "yaml")


# -- pykka's private parts -----------------------------------------------------------------


def test_every_private_pykka_name_modcoord_uses_is_still_there() -> None:
    problems = _pykka.verify()
    assert problems == [], "pykka changed under modcoord:\n" + "\n".join(problems)


def test_the_installed_pykka_is_in_the_checked_range() -> None:
    major, minor = (int(p) for p in metadata.version("pykka").split(".")[:2])
    assert _pykka.PYKKA_RANGE == ">=4.1,<5"
    assert (4, 1) <= (major, minor) < (5, 0), (
        f"pykka {metadata.version('pykka')} is outside {_pykka.PYKKA_RANGE}: re-check every "
        "'PRIVATE pykka API' note in actors/_pykka.py")


def test_verify_names_a_missing_private_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(pykka_messages, "_ActorStop")
    problems = _pykka.verify()
    assert len(problems) == 1 and "_ActorStop" in problems[0] and "4.1" in problems[0]


def test_verify_notices_when_pykka_stops_calling_the_loop_hook(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def loop(self: pykka.ThreadingActor) -> None:  # a pykka that runs its own loop
        self._actor_loop_setup()

    monkeypatch.setattr(pykka.ThreadingActor, "_actor_loop", loop)
    assert any("no longer calls _actor_loop_running" in p for p in _pykka.verify())


def test_only_the_pykka_module_reaches_into_pykka_privates() -> None:
    private = re.compile(r"pykka\._|pykka_messages\._|_actor_loop_running|_handle_receive|"
                         r"_create_actor_inbox|_ActorStop")
    offenders = [
        f"{path.relative_to(ACTORS_DIR)}:{n}"
        for path in sorted(ACTORS_DIR.rglob("*.py")) if path.name != "_pykka.py"
        for n, line in enumerate(path.read_text().splitlines(), 1) if private.search(line)
    ]
    assert offenders == []


# -- lazy package init ---------------------------------------------------------------------


@pytest.mark.parametrize("module", ["modcoord.actors.errors", "modcoord.actors.update",
                                    "modcoord.actors", "modcoord.actors.reply"])
def test_light_modules_import_nothing_heavy(module: str) -> None:
    code = (f"import sys, json, {module}\n"
            f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, check=True)
    assert json.loads(out.stdout) == [], f"import {module} loaded {out.stdout.strip()}"


def test_every_public_name_of_the_package_resolves() -> None:
    for name in modcoord.actors.__all__:
        assert getattr(modcoord.actors, name) is not None, name
    assert set(modcoord.actors.__all__) <= set(dir(modcoord.actors))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        modcoord.actors.Nope  # noqa: B018


# -- the typed shared context --------------------------------------------------------------


def test_shared_is_frozen_and_sized_by_the_mode_settings(clock: MockClock) -> None:
    settings = ModeSettings.model_validate(
        {"batch": {"max_queue": 77, "max_size": 5}, "monitor": {"window_s": 12.0},
         "cache": {"max_entries": 9}})
    shared = Shared.create(clock, settings)
    assert shared.queue_gauge.max_queue == 77
    assert shared.metrics.window_s == 12.0
    assert shared.cache_store.statistics().max_size == 9
    assert shared.deliver is no_sink
    with pytest.raises(dataclasses.FrozenInstanceError):
        shared.metrics = shared.metrics  # type: ignore[misc]


def test_a_successor_takes_over_the_shared_objects(clock: MockClock) -> None:
    shared = Shared.create(clock)
    handle = ActorHandle("cache")
    settings = CacheSettings()
    first = CacheActor.start(settings, ActorContext(clock, {"cache": handle}, shared=shared))
    handle.install(first)
    handle.ask(Put("k", "v"))
    first.stop()
    second = CacheActor.start(settings, ActorContext(clock, {"cache": handle},
                                                     generation=1, shared=shared))
    handle.install(second)
    try:
        assert handle.ask(Statistics()).size == 1 and shared.cache_store.get("k") == "v"
    finally:
        second.stop()


def test_no_string_lookups_of_shared_objects_nor_imports_by_name() -> None:
    code = [(p, p.read_text()) for p in sorted(ACTORS_DIR.rglob("*.py"))]
    code += [(p, p.read_text()) for p in
             (ACTORS_DIR.parent / "supervisor").rglob("*.py")]
    assert [str(p) for p, text in code if re.search(r"\.extras\b|\bextras=", text)] == []
    assert [str(p) for p, text in code if "__import__(" in text] == []


# -- the engine seam -----------------------------------------------------------------------


def test_the_daemon_builds_the_local_engine_by_default() -> None:
    engine = create_engine(load_config_dir(), mode="HYBRID", on_escalate=lambda r: None)
    assert isinstance(engine, ModuleCoordinator) and LocalEngine is ModuleCoordinator
    assert not engine.running
    with pytest.raises(ValueError, match="unknown engine 'raft'; choose one of local, nats"):
        create_engine(load_config_dir(), mode="HYBRID", on_escalate=lambda r: None,
                      kind="raft")


def test_typed_results_keep_their_wire_form() -> None:
    assert Registration("m", "HYBRID", "balanced").as_dict() == {
        "module_id": "m", "mode": "HYBRID", "strategy": "balanced"}
