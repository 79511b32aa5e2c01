"""Meta-tests: every hook is documented with its exact signature and exercised by a test."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from collab_core import hookspecs
from collab_core.registry import KINDS

ROOT = Path(__file__).resolve().parents[2]
HOOKS = sorted(n for n in dir(hookspecs) if n.startswith("collab_register_"))


def test_every_kind_has_a_hook_and_every_hook_a_kind():
    assert sorted(KINDS.values()) == HOOKS
    assert len(HOOKS) == 8


def test_every_hook_is_documented_with_its_exact_signature():
    docs = (ROOT / "docs" / "plugins.md").read_text()
    for name in HOOKS:
        fn = getattr(hookspecs, name)
        params = ", ".join(inspect.signature(fn).parameters)
        assert f"### {name}({params})" in docs, f"docs/plugins.md lacks a section '### {name}({params})'"
        assert fn.__doc__ and "register(" in fn.__doc__


def test_every_hook_has_a_test():
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py") if p.name != Path(__file__).name)
    for name in HOOKS:
        assert re.search(rf"def {name}\(", tests), f"no test implements {name}"


def test_hook_specs_take_only_register():
    for name in HOOKS:
        assert list(inspect.signature(getattr(hookspecs, name)).parameters) == ["register"]
