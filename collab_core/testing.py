"""A pytest plugin for people who write collab plugins (and for collab's own tests).

Enable it in a ``conftest.py``::

    pytest_plugins = ["collab_core.testing"]

Fixtures:

``collab_registry(*plugins, entry_points=False, disabled=())``
    Build a fresh registry from plugin objects (modules or objects with ``@hookimpl`` functions)
    and make it the process-wide one for the rest of the test.
``installed_distribution(name, source, version="1.0", entry_point=None, module=None)``
    Write a real installed-looking distribution (a module plus ``<name>-<version>.dist-info`` with
    ``METADATA`` and ``entry_points.txt``) into ``tmp_path`` and put it on ``sys.path``, so that
    entry-point loading finds it exactly as it finds a pip-installed plugin. Returns the folder.
``fresh_registry``
    Forget the process-wide registry before and after the test, so plugins are loaded anew.
"""

from __future__ import annotations

import importlib
import re
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .registry import Registry, build_registry, reset_registry, use_registry


@pytest.fixture
def fresh_registry() -> Iterator[None]:
    reset_registry()
    yield
    reset_registry()


@pytest.fixture
def collab_registry() -> Iterator[Callable[..., Registry]]:
    stack: list[Any] = []

    def make(*plugins: Any, entry_points: bool = False, disabled: tuple[str, ...] = ()) -> Registry:
        registry = build_registry(plugins, entry_points=entry_points, disabled=disabled)
        ctx = use_registry(registry)
        ctx.__enter__()
        stack.append(ctx)
        return registry

    yield make
    while stack:
        stack.pop().__exit__(None, None, None)


@pytest.fixture
def installed_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Path]]:
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    added_modules: list[str] = []

    def install(
        name: str,
        source: str,
        version: str = "1.0",
        entry_point: str | None = None,
        module: str | None = None,
    ) -> Path:
        module = module or re.sub(r"[-.]", "_", name)
        entry_point = entry_point or name
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        dist_info = site / f"{re.sub(r'[-.]', '_', name)}-{version}.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        )
        (dist_info / "entry_points.txt").write_text(f"[collab]\n{entry_point} = {module}\n")
        (dist_info / "RECORD").write_text("")
        added_modules.append(module)
        importlib.invalidate_caches()
        reset_registry()
        return site

    yield install
    for module in added_modules:
        sys.modules.pop(module, None)
    importlib.invalidate_caches()
    reset_registry()
