"""The plugin registry: loading, attribution, duplicates, unknown names, blocking, requirements."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from collab_core import hookimpl
from collab_core.errors import (
    DuplicateComponentError,
    MissingPluginsError,
    PluginError,
    UnknownComponentError,
)
from collab_core.registry import (
    Command,
    build_registry,
    check_required_plugins,
    get_registry,
    install_line,
)

CORE_ONLY = os.environ.get("COLLAB_EXPECT_CORE_ONLY") == "1"


class FakePlugin:
    """A plugin object with one hook of every kind."""

    __name__ = "fake-plugin"

    @hookimpl
    def collab_register_backends(self, register):
        register("fake-backend", object, apis=("fakeapi",), settings=("sim", "lab"))

    @hookimpl
    def collab_register_launchers(self, register):
        register("fake-launcher", object)

    @hookimpl
    def collab_register_trackers(self, register):
        register("fake-tracker", object)

    @hookimpl
    def collab_register_environments(self, register):
        register("fake-env", object)

    @hookimpl
    def collab_register_recipes(self, register):
        from collab_core import RecipeBase

        class FakeRecipe(RecipeBase):
            pass

        register("fake-recipe", FakeRecipe)

    @hookimpl
    def collab_register_commands(self, register):
        register(Command("fake-cmd", "a fake command", lambda p: None, lambda a: 0))


def test_builtin_plugin_registers_core_defaults():
    reg = build_registry(entry_points=False)
    names = [p.name for p in reg.plugins()]
    assert names == ["collab-core"]
    core = reg.plugins()[0]
    assert core.distribution == "collab-core"
    assert core.version != "unknown"
    assert "plugins" in reg.names("command") and "run" in reg.names("command")
    assert "numpy.ndarray" in reg.names("serializer")
    assert reg.component("command", "plugins").distribution == "collab-core"


def test_fake_plugin_object_registers_every_kind(collab_registry):
    reg = collab_registry(FakePlugin())
    assert reg.launcher("fake-launcher") is object
    assert reg.tracker("fake-tracker") is object
    assert reg.environment("fake-env") is object
    assert reg.command("fake-cmd").help == "a fake command"
    assert reg.recipe("fake-recipe").__name__ == "FakeRecipe"
    assert reg.names("recipe") == ["cyclic", "fake-recipe", "fedavg", "split-learning", "swarm"]
    comp = reg.backend_for("fakeapi", "lab")
    assert comp.name == "fake-backend" and comp.plugin == "fake-plugin"
    info = {p.name: p for p in reg.plugins()}["fake-plugin"]
    assert info.components["launcher"] == ["fake-launcher"]
    assert "collab_register_backends" in info.hooks
    # the fixture made it the process-wide registry
    assert get_registry() is reg


def test_duplicate_name_names_both_registrants():
    class Other:
        __name__ = "other-plugin"

        @hookimpl
        def collab_register_launchers(self, register):
            register("fake-launcher", dict)

    with pytest.raises(DuplicateComponentError) as err:
        build_registry([FakePlugin(), Other()], entry_points=False)
    msg = str(err.value)
    assert "fake-plugin" in msg and "other-plugin" in msg and "'fake-launcher'" in msg


def test_unknown_name_lists_available_and_install_line():
    reg = build_registry([FakePlugin()], entry_points=False)
    with pytest.raises(UnknownComponentError) as err:
        reg.launcher("torchrun")
    assert err.value.available == ["fake-launcher"]
    assert "fake-launcher" in str(err.value)
    assert "pip install collab-torchrun" in str(err.value)
    with pytest.raises(UnknownComponentError) as err:
        reg.tracker("nosuch")
    assert "Check the spelling" in str(err.value)
    assert isinstance(err.value, LookupError)


def test_backend_for_missing_setting_names_the_provider():
    reg = build_registry(entry_points=False)
    with pytest.raises(UnknownComponentError) as err:
        reg.backend_for("collab", "poc")
    assert "pip install collab-tcp" in str(err.value)


def test_misspelled_hook_fails_at_load():
    class Typo:
        __name__ = "typo-plugin"

        @hookimpl
        def collab_register_backend(self, register):  # missing "s"
            pass

    with pytest.raises(PluginError) as err:
        build_registry([Typo()], entry_points=False)
    assert "typo-plugin" in str(err.value) and "collab_register_backend" in str(err.value)


def test_a_recipe_must_subclass_recipe_base():
    class Bad:
        __name__ = "bad-recipes"

        @hookimpl
        def collab_register_recipes(self, register):
            register("nope", dict)

    with pytest.raises(PluginError, match="subclass of collab_core.RecipeBase"):
        build_registry([Bad()], entry_points=False)


def test_collab_recipes_command_lists_the_standard_recipes():
    out = subprocess.run([sys.executable, "-m", "collab_core.cli", "recipes", "--json"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["fedavg"]["class"] == "collab_core.recipes.fedavg.FedAvgRecipe"
    assert rows["fedavg"]["distribution"] == "collab-core"
    assert rows["swarm"]["summary"].startswith("Swarm learning")


def test_bad_registration_is_a_clear_error():
    class Bad:
        __name__ = "bad-plugin"

        @hookimpl
        def collab_register_environments(self, register):
            register("x", 42)

    with pytest.raises(PluginError, match="bad-plugin.*must be callable"):
        build_registry([Bad()], entry_points=False)


def test_exception_inside_hook_names_the_plugin():
    class Boom:
        __name__ = "boom-plugin"

        @hookimpl
        def collab_register_trackers(self, register):
            raise RuntimeError("kaput")

    with pytest.raises(PluginError, match="boom-plugin.*collab_register_trackers.*kaput"):
        build_registry([Boom()], entry_points=False)


DIST_SOURCE = """
from collab_core import hookimpl

@hookimpl
def collab_register_trackers(register):
    register("csv", dict)

@hookimpl
def collab_register_environments(register):
    register("lab", dict)
"""


def test_installed_distribution_found_through_entry_points(installed_distribution):
    installed_distribution("collab-csv", DIST_SOURCE, version="2.3")
    reg = get_registry()
    comp = reg.component("tracker", "csv")
    assert (comp.distribution, comp.version, comp.plugin) == ("collab-csv", "2.3", "collab-csv")
    assert reg.environment("lab") is dict
    info = {p.name: p for p in reg.plugins()}["collab-csv"]
    assert info.module == "collab_csv"
    assert info.components == {"tracker": ["csv"], "environment": ["lab"]}


def test_blocked_plugin_by_distribution_or_entry_point_name(installed_distribution, monkeypatch):
    installed_distribution("collab-csv", DIST_SOURCE, entry_point="csv-plugin")
    for blocked in ("collab-csv", "csv-plugin", "Collab_CSV"):
        monkeypatch.setenv("COLLAB_DISABLE_PLUGINS", f"something-else, {blocked}")
        reg = build_registry()
        assert "csv" not in reg.names("tracker"), blocked
        assert "csv-plugin" not in [p.name for p in reg.plugins()]
    monkeypatch.delenv("COLLAB_DISABLE_PLUGINS")
    assert "csv" in build_registry().names("tracker")


def test_core_cannot_be_disabled(monkeypatch):
    monkeypatch.setenv("COLLAB_DISABLE_PLUGINS", "collab-core")
    with pytest.raises(PluginError, match="cannot be disabled"):
        build_registry()


def test_broken_entry_point_names_distribution_and_entry_point(installed_distribution):
    installed_distribution("collab-broken", "import collab_no_such_module_xyz\n", version="0.7")
    with pytest.raises(PluginError) as err:
        get_registry()
    msg = str(err.value)
    assert "collab-broken" in msg and "0.7" in msg and "entry point" in msg
    assert "ModuleNotFoundError" in msg and "COLLAB_DISABLE_PLUGINS=collab-broken" in msg
    assert not isinstance(err.value, ModuleNotFoundError)


def test_duplicate_across_installed_distributions(installed_distribution):
    installed_distribution("collab-csv", DIST_SOURCE)
    installed_distribution("collab-csv2", DIST_SOURCE)
    with pytest.raises(DuplicateComponentError) as err:
        get_registry()
    assert "collab-csv" in str(err.value) and "collab-csv2" in str(err.value)


def test_registry_is_loaded_once_and_lazily(fresh_registry):
    code = (
        "import sys, collab_core, collab_core.registry as r;"
        "assert r._registry is None;"
        "a = r.get_registry(); b = r.get_registry(); assert a is b; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# -- check_required_plugins --------------------------------------------------------------------------


def test_required_plugins_all_present():
    check_required_plugins(["collab-core>=0.1", "pluggy"])


def test_required_plugins_lists_every_problem_in_one_error(installed_distribution):
    installed_distribution("collab-csv", DIST_SOURCE, version="0.5")
    with pytest.raises(MissingPluginsError) as err:
        check_required_plugins(["collab-nonexistent-xyz>=0.1", "collab-csv>=1.0", "collab-core>=0.1"])
    problems = err.value.problems
    assert len(problems) == 2
    assert "pip install 'collab-nonexistent-xyz>=0.1'" in problems[0]
    assert "collab-csv 0.5 is installed" in problems[1] and "pip install 'collab-csv>=1.0'" in problems[1]
    assert all(p in str(err.value) for p in problems)


def test_required_plugin_disabled_is_reported(installed_distribution, monkeypatch):
    installed_distribution("collab-csv", DIST_SOURCE)
    monkeypatch.setenv("COLLAB_DISABLE_PLUGINS", "collab-csv")
    with pytest.raises(MissingPluginsError, match="disabled by COLLAB_DISABLE_PLUGINS"):
        check_required_plugins(["collab-csv"])


def test_required_plugin_invalid_requirement():
    with pytest.raises(PluginError, match="not a valid PEP 508"):
        check_required_plugins(["collab torchrun >= 1"])


def test_required_plugin_marker_that_does_not_apply_is_ignored():
    check_required_plugins(['collab-nonexistent-xyz; python_version < "3.0"'])


def test_install_line_quotes_specifiers():
    assert install_line("collab-sim") == "pip install collab-sim"
    assert install_line("collab-tracking[mlflow]>=0.1") == "pip install 'collab-tracking[mlflow]>=0.1'"


# -- installed state ---------------------------------------------------------------------------------


@pytest.mark.skipif(CORE_ONLY, reason="needs the plugins installed (the core-only env has none)")
def test_collab_sim_is_an_installed_plugin():
    reg = get_registry()
    comp = reg.component("environment", "sim")
    assert comp.distribution == "collab-sim"


@pytest.mark.skipif(not CORE_ONLY, reason="only meaningful where collab-core is installed alone")
def test_core_alone_has_no_plugins_and_says_how_to_get_them():
    reg = get_registry()
    assert [p.name for p in reg.plugins()] == ["collab-core"]
    with pytest.raises(UnknownComponentError, match="pip install collab-sim"):
        reg.environment("sim")
    assert "torch" not in sys.modules


def test_collab_plugins_json_command():
    out = subprocess.run(
        [sys.executable, "-m", "collab_core.cli", "plugins", "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    by_name = {p["name"]: p for p in data}
    assert by_name["collab-core"]["components"]["command"] == ["clean", "new", "plugins", "recipes", "run"]
    assert by_name["collab-core"]["components"]["recipe"] == ["cyclic", "fedavg", "split-learning", "swarm"]
    if not CORE_ONLY:
        assert by_name["collab-sim"]["components"] == {"backend": ["inproc"], "environment": ["sim"]}


def test_collab_plugins_table_command():
    out = subprocess.run(
        [sys.executable, "-m", "collab_core.cli", "plugins"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:4] == ["PLUGIN", "DISTRIBUTION", "VERSION", "REGISTERS"]
    assert lines[1].startswith("collab-core")
    assert "command: clean, new, plugins, recipes, run" in lines[1]


def test_cli_reports_broken_plugin_cleanly(installed_distribution, tmp_path):
    site = installed_distribution("collab-broken", "raise RuntimeError('nope')\n")
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run(
        [sys.executable, "-m", "collab_core.cli", "plugins"], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 2
    assert "collab: error:" in out.stderr and "collab-broken" in out.stderr
    assert "Traceback" not in out.stderr


SERIALIZER_DIST = """
from collab_core import hookimpl
from collab_core.wire import Serializer


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y


@hookimpl
def collab_register_serializers(register):
    register(Serializer(
        name="collab_points.Point",
        type_names=("collab_points.Point",),
        encode=lambda p, ctx: [p.x, p.y],
        decode=lambda data, ctx: Point(*data),
    ))
"""


def test_serializer_from_an_installed_plugin_is_used_by_the_wire(installed_distribution):
    from collab_core import wire

    installed_distribution("collab-points", SERIALIZER_DIST)
    import collab_points

    comp = get_registry().component("serializer", "collab_points.Point")
    assert comp.distribution == "collab-points"
    header, buffers = wire.dumps({"p": collab_points.Point(1, 2.5)})
    back = wire.loads(header, buffers)["p"]
    assert type(back) is collab_points.Point and (back.x, back.y) == (1, 2.5)


def test_serializer_registered_twice_names_both(installed_distribution):
    installed_distribution("collab-points", SERIALIZER_DIST)
    installed_distribution("collab-points2", SERIALIZER_DIST.replace("import Serializer", "import Serializer as Serializer"))
    with pytest.raises(DuplicateComponentError, match="collab-points.*collab-points2|collab-points2.*collab-points"):
        get_registry()
