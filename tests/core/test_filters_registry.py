"""Filters as a plugin kind, and the parts of the filter mechanism that need no environment:
decorators, method choice, arguments as a dict, the built-in filters, job.json validation
(hostile input), per-site instances. Core only: no collab-sim here."""

from __future__ import annotations

import copy
import inspect
import json
import subprocess
import sys

import pytest

from collab_core import FLModel, collab, hookimpl
from collab_core import filters as F
from collab_core.errors import DuplicateComponentError, RecipeError, UnknownComponentError
from collab_core.loading import JOB_FILE, SCHEMA, VERSION, validate_job_config
from collab_core.registry import build_registry, use_registry


class Halve:
    def __init__(self, key="w"):
        self.key = key
        self.calls = 0

    @collab.result_filter
    def halve(self, result):
        self.calls += 1
        return {**result, self.key: result[self.key] / 2}


class FilterPlugin:
    __name__ = "filter-plugin"

    @hookimpl
    def collab_register_filters(self, register):
        register("halve", Halve)


def test_a_plugin_registers_a_filter_that_a_recipe_adds_by_name():
    reg = build_registry([FilterPlugin()], entry_points=False)
    assert reg.names("filter") == ["exclude_vars", "halve", "include_vars"]
    comp = reg.component("filter", "halve")
    assert comp.obj is Halve and comp.plugin == "filter-plugin"
    with use_registry(reg):
        spec = F.FilterSpec("client", "out", None, "halve", {"key": "v"}, None, None, F.new_instance_id())
        one = F.build_site_filters([spec], "site-1", False, copy=True)
        two = F.build_site_filters([spec], "site-2", False, copy=True)
        assert F.build_site_filters([spec], "server", True, copy=True) is None  # a client filter
        a = one.chain("result", "out", "train", "client")[0]
        b = two.chain("result", "out", "train", "client")[0]
        assert a.obj is not b.obj and a.obj.key == "v"  # each site builds its own, with the options
        assert a.fn({"v": 4.0}) == {"v": 2.0}
        with pytest.raises(RecipeError, match="does not take the options"):
            F.build_registered("halve", {"nope": 1})


def test_a_filter_name_registered_twice_is_refused_and_a_missing_one_lists_what_is_there():
    class Clash:
        __name__ = "clash"

        @hookimpl
        def collab_register_filters(self, register):
            register("exclude_vars", Halve)

    with pytest.raises(DuplicateComponentError, match="filter 'exclude_vars' is registered twice"):
        build_registry([Clash()], entry_points=False)
    reg = build_registry(entry_points=False)
    with pytest.raises(UnknownComponentError, match="no filter named 'halve'.*exclude_vars, include_vars"):
        reg.filter("halve")


def test_collab_plugins_lists_the_filters():
    out = subprocess.run([sys.executable, "-m", "collab_core.cli", "plugins"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    core = next(line for line in out.stdout.splitlines() if line.startswith("collab-core"))
    assert "filter: exclude_vars, include_vars" in core
    data = subprocess.run([sys.executable, "-m", "collab_core.cli", "plugins", "--json"], capture_output=True,
                          text=True, timeout=60)
    by_name = {p["name"]: p for p in json.loads(data.stdout)}
    assert by_name["collab-core"]["components"]["filter"] == ["exclude_vars", "include_vars"]


# -- decorators and method choice ------------------------------------------------------------------


class Codec:
    @collab.out_call_filter
    def encode(self, kwargs):
        return kwargs

    @collab.in_call_filter
    def decode(self, kwargs):
        return kwargs

    @collab.result_filter
    def results(self, result, context):
        return result


def test_the_directional_method_is_chosen_before_the_plain_one():
    assert F.pick(Codec(), "call", "out") == "encode"
    assert F.pick(Codec(), "call", "in") == "decode"
    assert F.pick(Codec(), "result", "in") == F.pick(Codec(), "result", "out") == "results"
    assert F.filter_methods(Codec())["out_call_filter"] == ["encode"]
    # decorating does not make a published method, and leaves the function as it was
    assert Codec.encode.__name__ == "encode" and not hasattr(Codec.encode, "__collab_role__")


def test_a_subclass_inherits_filter_methods_and_an_override_without_the_decorator_drops_one():
    class Sub(Codec):
        def decode(self, kwargs):  # no decorator: no longer an input call filter
            return kwargs

    assert F.pick(Sub(), "call", "in") is None
    assert F.pick(Sub(), "call", "out") == "encode"


def test_check_filter_object_needs_a_method_for_the_direction():
    class OnlyOut:
        @collab.out_result_filter
        def f(self, result):
            return result

    F.check_filter_object(OnlyOut(), "out", "here")
    with pytest.raises(RecipeError, match="no call/result filter method for the input direction"):
        F.check_filter_object(OnlyOut(), "in", "here")


# -- arguments as a dict ---------------------------------------------------------------------------


def _sig(fn):
    return inspect.signature(fn)


def test_args_to_dict_and_back_keep_positional_only_and_varargs():
    def f(a, /, b, *rest, c=1, **more):
        return a, b, rest, c, more

    sig = _sig(f)
    d = F.args_to_dict(sig, (1, 2, 3, 4), {"c": 5, "x": 6})
    assert d == {"a": 1, "b": 2, "rest": (3, 4), "c": 5, "x": 6}
    args, kwargs = F.dict_to_args(sig, d)
    assert f(*args, **kwargs) == (1, 2, (3, 4), 5, {"x": 6})

    def g(weights, scale=1.0):
        return weights, scale

    d = F.args_to_dict(_sig(g), (7,), {})
    assert d == {"weights": 7}
    d["extra"] = "added by a filter"
    args, kwargs = F.dict_to_args(_sig(g), d)
    assert args == () and kwargs == {"weights": 7, "extra": "added by a filter"}
    with pytest.raises(F.FilterError, match="3 positional arguments"):
        F.args_to_dict(_sig(g), (1, 2, 3), {})
    with pytest.raises(F.FilterError, match="given twice"):
        F.args_to_dict(_sig(g), (1,), {"weights": 2})
    # no signature known on this side: positional arguments travel as one entry
    d = F.args_to_dict(None, (1, 2), {"k": 3})
    assert d == {F.UNNAMED_ARGS: (1, 2), "k": 3}
    assert F.dict_to_args(None, d) == ((1, 2), {"k": 3})


def test_events_are_not_filtered():
    from collab_core.events import FIRE_METHOD

    spec = F.FilterSpec("server", "out", Codec())
    sf = F.build_site_filters([spec], "server", True, copy=False)
    assert sf.chain("call", "out", "train", "client") and not sf.chain("call", "out", FIRE_METHOD, "client")


# -- built-in filters ------------------------------------------------------------------------------


def test_exclude_and_include_vars():
    ex = F.ExcludeVars(names=["bn.*", "head"])
    state = {"conv.w": 1, "bn.mean": 2, "bn.var": 3, "head": 4}
    assert ex.filter_result(state) == {"conv.w": 1}
    assert ex.filter_result((state, 10)) == ({"conv.w": 1}, 10)
    model = ex.filter_result(FLModel(params=state, metrics={"bn.mean": 0.5}))
    assert model.params == {"conv.w": 1} and model.metrics == {"bn.mean": 0.5}
    assert ex.filter_call({"weights": state, "n": 3}) == {"weights": {"conv.w": 1}, "n": 3}
    only = F.ExcludeVars(names="bn.*", args=["weights"])
    assert only.filter_call({"weights": state, "other": {"bn.x": 1}}) == {
        "weights": {"conv.w": 1, "head": 4}, "other": {"bn.x": 1}}
    inc = F.IncludeVars(names=["conv.*"])
    assert inc.filter_result(state) == {"conv.w": 1}
    assert inc.filter_result(42) == 42  # not a model: passes as it is
    with pytest.raises(RecipeError, match="names must be"):
        F.ExcludeVars(names=[])
    assert F.pick(inc, "call", "in") == "filter_call" and F.pick(inc, "result", "out") == "filter_result"


# -- job.json: the "filters" and "decomposers" keys are hostile input ------------------------------


def _config(**extra):
    return {"schema": SCHEMA, "version": VERSION, "job_name": "j", "api": "collab", "min_clients": 1,
            "server": {"module": "m", "class": "S", "args": {}}, "client": {"module": "m", "class": "C"}, **extra}


GOOD = {"side": "client", "direction": "out", "object": {"module": "pkg.f", "class": "Clip", "args": {"b": 1}},
        "tasks": ["train"], "clients": ["site-1"], "instance": 0}


@pytest.mark.parametrize("entry, message", [
    ({**GOOD, "exec": "rm -rf /"}, "unknown key"),
    ({**GOOD, "side": "both"}, "side must be"),
    ({**GOOD, "direction": "sideways"}, "direction must be"),
    ({**GOOD, "name": "exclude_vars"}, "exactly one of"),
    ({k: v for k, v in GOOD.items() if k != "object"}, "exactly one of"),
    ({**GOOD, "object": {"module": "os", "class": "__class__"}}, "not a class name"),
    ({**GOOD, "object": {"module": "os;rm", "class": "X"}}, "not a dotted module name"),
    ({**GOOD, "object": {"module": "os"}}, "names a class"),
    ({**GOOD, "tasks": "train"}, None),  # one string is one pattern: fine
    ({**GOOD, "tasks": []}, "tasks must be"),
    ({**GOOD, "tasks": [1]}, "tasks must be"),
    ({**GOOD, "clients": ["server"]}, "clients names client sites"),
    ({**GOOD, "instance": -1}, "instance must be"),
    ({**GOOD, "instance": True}, "instance must be"),
    ({"side": "server", "direction": "in", "name": "x", "clients": ["site-1"]}, "clients is for client"),
    ({"side": "server", "direction": "in", "name": "x", "options": {"a": float("nan")}}, "NaN"),
    ({"side": "server", "direction": "in", "name": "x", "options": {"not an id": 1}}, "keyword arguments"),
    ({"side": "server", "direction": "in", "name": "\x00"}, "registered filter's name"),
    ({**GOOD, "options": {"a": 1}}, "options are for registered filters"),
    ("not an object", "must be an object"),
    ({**GOOD, "kinds": ["call", "call"]}, "kinds must be"),
    ({**GOOD, "kinds": ["everything"]}, "kinds must be"),
    ({**GOOD, "kinds": ["result"]}, None),
])
def test_job_json_filter_entries_are_validated(entry, message):
    if message is None:
        validate_job_config(_config(filters=[entry]), JOB_FILE)
        return
    with pytest.raises(RecipeError, match=message):
        validate_job_config(_config(filters=[entry]), JOB_FILE)


def test_job_json_filters_and_decomposers_shapes():
    validate_job_config(_config(filters=[GOOD], decomposers=["pkg.types.Point", "pkg.wire:SERIALIZERS"]))
    with pytest.raises(RecipeError, match="filters must be a list"):
        validate_job_config(_config(filters={"a": 1}))
    for bad in (["os"], ["pkg.__init__.x"], ["a.b; c"], "pkg.types.Point", [1]):
        with pytest.raises(RecipeError, match="decomposers must be a list of import paths"):
            validate_job_config(_config(decomposers=bad))


def test_job_json_entries_sharing_an_instance_build_one_object_per_process():
    built = []

    def build(desc, role):
        built.append(desc["class"])
        return Codec()

    entries = [
        {"side": "client", "direction": "out", "object": {"module": "m", "class": "Codec"}, "instance": 0},
        {"side": "client", "direction": "in", "object": {"module": "m", "class": "Codec"}, "instance": 0},
        {"side": "client", "direction": "in", "name": "exclude_vars", "options": {"names": ["x"]}, "instance": 1},
    ]
    specs = F.from_config(entries, build)
    assert built == ["Codec"] and specs[0].obj is specs[1].obj
    sf = F.build_site_filters(specs, "site-1", False, copy=False)
    assert sf.chain("call", "out", "train", "client")[0].obj is sf.chain("call", "in", "train", "client")[0].obj
    assert [a.label for a in sf.chain("call", "in", "train", "client")] == ["Codec.decode", "ExcludeVars.filter_call"]


def test_recipe_filter_specs_copy_per_site_but_share_one_object_across_directions():
    codec = Codec()
    inst = F.new_instance_id()
    specs = [F.FilterSpec("client", "out", codec, instance=inst), F.FilterSpec("client", "in", codec, instance=inst)]
    s1 = F.build_site_filters(specs, "site-1", False, copy=True)
    s2 = F.build_site_filters(specs, "site-2", False, copy=True)
    o1 = s1.chain("call", "out", "x", "client")[0].obj
    assert o1 is s1.chain("call", "in", "x", "client")[0].obj  # one object on the site, both directions
    assert o1 is not s2.chain("call", "out", "x", "client")[0].obj and o1 is not codec
    assert not s1.chain("call", "out", "collab:tracking", "client")  # collab's own calls: never filtered
    assert copy.deepcopy(codec) is not codec


def test_tasks_patterns_match_method_or_qualified_name():
    spec = F.FilterSpec("client", "out", Codec(), tasks=("train", "*.evaluate", "metric_receiver.*"))
    active = F._Active(spec, spec.obj, "encode", spec.obj.encode)
    assert active.matches("train", "client")
    assert active.matches("evaluate", "client")  # client.evaluate
    assert active.matches("metric_receiver.accept", "server")
    assert active.matches("helper.train", "client")  # a bare name matches the method of any object
    assert not active.matches("validate", "client")
