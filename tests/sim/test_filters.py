"""Call and result filters in SimEnv: direction, site, order, tasks, per-site instances, the
filter context, transformations into other types, errors; and add_server_config /
add_client_config, add_decomposers, process_env."""

from __future__ import annotations

import attrs
import numpy as np
import pytest

from collab_core import (
    CollabCallError,
    CollabRecipe,
    FilterContext,
    FLModel,
    RecipeError,
    collab,
    wire,
)
from collab_core.job import load_job, read_job_config
from collab_sim import SimEnv

# -- apps ------------------------------------------------------------------------------------------


class Trainer:
    @collab.publish
    def train(self, weights, scale=1.0):
        return weights * scale + int(collab.site_name.split("-")[1])

    @collab.publish
    def evaluate(self, weights):
        return float(np.sum(weights))

    @collab.publish
    def echo(self, value):
        return value

    @collab.publish
    def seen_prop(self):
        return collab.get_prop("from_filter", "unset")

    @collab.publish
    def ask_server(self, x):
        return collab.server.double(x)


class Server:
    def __init__(self, plan="train"):
        self.plan = plan

    @collab.publish
    def double(self, x):
        return 2 * x

    @collab.main
    def run(self):
        w = np.ones(3)
        if self.plan == "train":
            return {s: v.tolist() for s, v in collab.clients.train(w)}
        if self.plan == "both":
            return {"train": {s: v.tolist() for s, v in collab.clients.train(w)},
                    "evaluate": dict(collab.clients.evaluate(w))}
        if self.plan == "echo":
            return dict(collab.clients.echo({"a": 1, "b": 2, "bn.mean": 3}))
        if self.plan == "prop":
            return dict(collab.clients.seen_prop())
        if self.plan == "ask":
            return dict(collab.clients.ask_server(5))
        if self.plan == "nonblocking":
            return collab.clients["site-1"](blocking=False).train(w).result().tolist()
        if self.plan == "round":
            out = {}
            for r in range(2):
                collab.set_prop("round", r)
                out[r] = {s: _plain(v) for s, v in collab.clients.train(w)}
            return out
        if self.plan == "tolerant":
            res = collab.clients(min_responses=1).train(w)
            return {"ok": sorted(res.sites), "failures": {s: str(e) for s, e in res.failures.items()}}
        raise AssertionError(self.plan)


def _plain(value):
    return value.tolist() if isinstance(value, np.ndarray) else value


def _run(recipe, n=2, **kw):
    run = recipe.execute(SimEnv(num_clients=n, **kw))
    assert run.status == "finished", run.error
    return run.result


def _recipe(plan="train", n=2, **kw):
    return CollabRecipe(job_name=f"filters-{plan}", server=Server(plan), client=Trainer(), min_clients=n, **kw)


# -- filters ---------------------------------------------------------------------------------------


class Clip:
    """Clip every value of a result to [-bound, bound] (an output result filter on clients)."""

    def __init__(self, bound=1.5):
        self.bound = bound

    @collab.result_filter
    def clip(self, result):
        return np.clip(result, -self.bound, self.bound)


class Scale:
    """Multiply the ``weights`` argument (a call filter)."""

    def __init__(self, factor=10.0):
        self.factor = factor

    @collab.call_filter
    def scale(self, kwargs):
        kwargs["weights"] = kwargs["weights"] * self.factor
        return kwargs


class AddConst:
    def __init__(self, value=1.0):
        self.value = value

    @collab.result_filter
    def add(self, result):
        return result + self.value


class MulConst:
    def __init__(self, value=2.0):
        self.value = value

    @collab.result_filter
    def mul(self, result):
        return result * self.value


class Counter:
    """Per-site state: counts the calls it filtered on its site and stamps the count on results."""

    def __init__(self):
        self.count = 0

    @collab.result_filter
    def stamp(self, result, context):
        self.count += 1
        return {"site": context.site, "count": self.count, "value": result.tolist()}


class Recorder:
    """Records what its context says (in a per-class list: the server's instance is the object)."""

    seen: list = []

    @collab.call_filter
    def on_call(self, kwargs, context: FilterContext):
        Recorder.seen.append(("call", context.site, context.direction, context.peer, context.method,
                              context.qualified_method, context.targets, context.target_group_size,
                              context.parent.get_prop("round") if context.parent else None,
                              collab.site_name, str(collab.context), context.group))
        return kwargs

    @collab.result_filter
    def on_result(self, result, context: FilterContext):
        Recorder.seen.append(("result", context.site, context.direction, context.peer, context.method))
        return result


@attrs.define
class Opaque:
    """A type the wire does not know (not registered): only a filter's output may cross."""

    values: list


class OpaqueCodec:
    """Encode an Opaque argument to a dict on the way out, decode it on the way in: the directional
    forms, one object added on both sides."""

    @collab.out_call_filter
    def encode(self, kwargs):
        value = kwargs.get("value")
        if isinstance(value, Opaque):
            kwargs["value"] = {"opaque": value.values}
        return kwargs

    @collab.in_call_filter
    def decode(self, kwargs):
        value = kwargs.get("value")
        if isinstance(value, dict) and "opaque" in value:
            kwargs["value"] = Opaque(value["opaque"])
        return kwargs

    @collab.out_result_filter
    def encode_result(self, result):
        return {"opaque": result.values} if isinstance(result, Opaque) else result

    @collab.in_result_filter
    def decode_result(self, result):
        return Opaque(result["opaque"]) if isinstance(result, dict) and "opaque" in result else result


class OpaqueServer:
    @collab.main
    def run(self):
        out = dict(collab.clients.echo(Opaque([1, 2])))
        return {s: (type(v).__name__, v.values) for s, v in out.items()}


class Boom:
    def __init__(self, where="site-2"):
        self.where = where

    @collab.result_filter
    def explode(self, result):
        if collab.site_name == self.where:
            raise ValueError("refusing this update")
        return result


class NotADict:
    @collab.call_filter
    def bad(self, kwargs):
        return list(kwargs.values())


class SetProp:
    @collab.in_call_filter
    def mark_call(self, kwargs):
        collab.set_prop("from_filter", f"set on {collab.site_name}")
        return kwargs

    @collab.out_result_filter
    def read_back(self, result, context):
        return f"{result} / out filter saw {context.get_prop('from_filter')}"


class Envelope:
    """Server out: wrap the weights with an extra key; client in: take it out again (the method
    does not take that key)."""

    @collab.out_call_filter
    def wrap(self, kwargs, context):
        kwargs["_round_key"] = f"key-for-{context.peer}"
        return kwargs

    @collab.in_call_filter
    def unwrap(self, kwargs):
        key = kwargs.pop("_round_key")
        kwargs["scale"] = float(key.endswith("site-2")) + 1.0
        return kwargs


# -- tests -----------------------------------------------------------------------------------------


def test_client_output_result_filter_transforms_what_the_server_receives():
    recipe = _recipe()
    recipe.add_client_output_filter(Clip(1.5))
    # without the filter site-1 gives 2.0 and site-2 gives 3.0 per value
    assert _run(recipe) == {"site-1": [1.5, 1.5, 1.5], "site-2": [1.5, 1.5, 1.5]}


def test_server_output_call_filter_transforms_arguments_before_the_clients_see_them():
    recipe = _recipe()
    recipe.add_server_output_filter(Scale(10.0))
    assert _run(recipe) == {"site-1": [11.0] * 3, "site-2": [12.0] * 3}


def test_input_filters_run_on_the_receiving_site():
    recipe = _recipe()
    recipe.add_client_input_filter(Scale(3.0))  # on the clients, on the calls they serve
    recipe.add_server_input_filter(AddConst(100.0))  # on the server, on the results it receives
    assert _run(recipe) == {"site-1": [104.0] * 3, "site-2": [105.0] * 3}


def test_filters_of_one_site_and_direction_run_in_the_order_added():
    a = _recipe()
    a.add_client_output_filter(AddConst(1.0))
    a.add_client_output_filter(MulConst(10.0))
    b = _recipe()
    b.add_client_output_filter([MulConst(10.0), AddConst(1.0)])
    assert _run(a) == {"site-1": [30.0] * 3, "site-2": [40.0] * 3}  # (w+site+1)*10
    assert _run(b) == {"site-1": [21.0] * 3, "site-2": [31.0] * 3}  # (w+site)*10+1


def test_tasks_limit_a_filter_to_some_methods():
    plain = _recipe("both")
    plain.add_client_output_filter(MulConst(0.0), tasks=["train"])
    out = _run(plain)
    assert out["train"] == {"site-1": [0.0] * 3, "site-2": [0.0] * 3}
    assert out["evaluate"] == {"site-1": 3.0, "site-2": 3.0}  # not filtered
    for pattern in (["*.train"], ["client.train"], ["tr*"], "train"):
        r = _recipe("both")
        r.add_client_output_filter(MulConst(0.0), tasks=pattern)
        assert _run(r)["evaluate"] == {"site-1": 3.0, "site-2": 3.0}, pattern
        assert _run(r)["train"]["site-1"] == [0.0] * 3, pattern
    none = _recipe("both")
    none.add_client_output_filter(MulConst(0.0), tasks=["server.train", "eval"])
    assert _run(none)["train"]["site-1"] == [2.0] * 3  # neither pattern matches client.train


def test_clients_limits_a_client_filter_to_some_sites():
    recipe = _recipe(n=3)
    recipe.add_client_output_filter(MulConst(0.0), clients=["site-2"])
    assert _run(recipe, n=3) == {"site-1": [2.0] * 3, "site-2": [0.0] * 3, "site-3": [4.0] * 3}


def test_each_site_has_its_own_filter_instance():
    recipe = _recipe("round")
    counter = Counter()
    recipe.add_client_output_filter(counter)
    out = _run(recipe, n=3)
    for r in (0, 1):
        for site in ("site-1", "site-2", "site-3"):
            # each site counts only its own calls: 1 in round 0, 2 in round 1
            assert out[r][site]["count"] == r + 1 and out[r][site]["site"] == site
    assert counter.count == 0  # the recipe's object is a template; sites have copies


def test_the_filter_context_names_site_direction_peer_method_group_and_parent():
    Recorder.seen = []
    recipe = _recipe("round")
    recipe.add_server_output_filter(Recorder())
    recipe.add_server_input_filter(Recorder())
    _run(recipe, n=2)
    calls = [s for s in Recorder.seen if s[0] == "call"]
    results = [s for s in Recorder.seen if s[0] == "result"]
    assert len(calls) == 4 and len(results) == 4  # 2 rounds x 2 sites
    for entry in calls:
        _, site, direction, peer, method, qualified, targets, size, rnd, site_name, info, _ = entry
        assert (site, direction, method, qualified) == ("server", "out", "train", "client.train")
        assert peer in ("site-1", "site-2") and targets == ("site-1", "site-2") and size == 2
        assert site_name == "server" and info == f"server:server=>{peer}"
        assert rnd in (0, 1)
    assert sorted(e[8] for e in calls) == [0, 0, 1, 1]  # main's collab.set_prop("round", r)
    groups = {}
    for e in calls:
        groups.setdefault(e[8], set()).add(e[11])
    # one group number per group call (both targets of a round), another for the next round
    assert len(groups[0]) == len(groups[1]) == 1 and groups[0] != groups[1]
    assert {(e[1], e[2], e[4]) for e in results} == {("server", "in", "train")}
    assert {e[3] for e in results} == {"site-1", "site-2"}


def test_a_filter_may_replace_a_value_with_one_of_another_type_and_its_output_is_what_crosses():
    # Opaque is not registered with the wire: without the filters the call cannot be sent
    bare = CollabRecipe(job_name="opaque", server=OpaqueServer(), client=Trainer(), min_clients=2)
    run = bare.execute(SimEnv(num_clients=2))
    assert run.status == "failed" and "Opaque" in run.error
    recipe = CollabRecipe(job_name="opaque", server=OpaqueServer(), client=Trainer(), min_clients=2)
    codec = OpaqueCodec()
    recipe.add_server_output_filter(codec)
    recipe.add_server_input_filter(codec)
    recipe.add_client_input_filter(codec)
    recipe.add_client_output_filter(codec)
    assert _run(recipe) == {"site-1": ("Opaque", [1, 2]), "site-2": ("Opaque", [1, 2])}


def test_an_output_filter_may_add_an_argument_that_the_input_filter_takes_out():
    recipe = _recipe()
    env = Envelope()
    recipe.add_server_output_filter(env)
    recipe.add_client_input_filter(env)
    assert _run(recipe) == {"site-1": [2.0] * 3, "site-2": [4.0] * 3}  # scale 1 and 2


def test_input_call_filter_method_and_output_result_filter_share_the_call_props():
    recipe = _recipe("prop")
    recipe.add_client_input_filter(SetProp())
    recipe.add_client_output_filter(SetProp())
    assert _run(recipe) == {
        "site-1": "set on site-1 / out filter saw set on site-1",
        "site-2": "set on site-2 / out filter saw set on site-2",
    }


def test_calls_a_client_makes_to_the_server_are_filtered_on_both_ends():
    ok = _recipe("ask")

    class AddOne:
        @collab.call_filter
        def add(self, kwargs):
            return {**kwargs, "x": kwargs["x"] + 1}

        @collab.result_filter
        def plus_hundred(self, result):
            return result + 100

    ok.add_client_output_filter(AddOne(), tasks=["double"])  # client -> server: x + 1
    ok.add_server_output_filter(AddOne(), tasks=["double"])  # server's result: + 100
    ok.add_server_input_filter(AddOne(), tasks=["server.double"])  # served call: x + 1 again
    # x = 5 -> 6 (client out) -> 7 (server in) -> 14 -> 114 (server out result)
    assert _run(ok) == {"site-1": 114, "site-2": 114}


def test_a_non_blocking_call_gets_the_filtered_result():
    recipe = _recipe("nonblocking")
    recipe.add_server_input_filter(MulConst(0.5))
    assert _run(recipe) == [1.0, 1.0, 1.0]


def test_a_failing_filter_fails_that_call_naming_the_filter():
    recipe = _recipe("tolerant")
    recipe.add_client_output_filter(Boom("site-2"))
    out = _run(recipe)
    assert out["ok"] == ["site-1"]
    msg = out["failures"]["site-2"]
    assert "Boom.explode" in msg and "refusing this update" in msg and "client output result filter" in msg


def test_a_failing_filter_in_a_single_call_raises_collab_call_error():
    class OneCall:
        @collab.main
        def run(self):
            try:
                collab.clients["site-1"].train(np.ones(2))
            except CollabCallError as exc:
                return {"site": exc.site, "cause": type(exc.cause).__name__, "text": str(exc)}
            return "no error"

    class BoomCall:
        @collab.call_filter
        def explode(self, kwargs):
            raise ValueError("refusing this update")

    for side in ("server-out", "server-in", "client-in", "client-out"):
        recipe = CollabRecipe(job_name="fail", server=OneCall(), client=Trainer(), min_clients=1)
        add = {"server-out": recipe.add_server_output_filter, "server-in": recipe.add_server_input_filter,
               "client-in": recipe.add_client_input_filter, "client-out": recipe.add_client_output_filter}[side]
        boom = BoomCall() if side in ("server-out", "client-in") else Boom(
            "server" if side == "server-in" else "site-1")
        add(boom)
        out = _run(recipe, n=1)
        assert out["site"] == "site-1", out
        # a filter on the caller fails with FilterError; one on the site arrives as its remote error
        assert out["cause"] == ("FilterError" if side.startswith("server") else "RemoteError"), out
        assert f"{type(boom).__name__}.explode" in out["text"] and "refusing this update" in out["text"]
        assert f"{side.replace('-in', ' input').replace('-out', ' output')}" in out["text"]


def test_a_call_filter_must_return_the_arguments_as_a_dict():
    recipe = _recipe()
    recipe.add_server_output_filter(NotADict())
    run = recipe.execute(SimEnv(num_clients=2))
    assert run.status == "failed"
    assert "NotADict.bad" in run.error and "returned list" in run.error


def test_filters_see_no_system_calls_and_client_api_calls_are_filtered(tmp_path):
    script = tmp_path / "client_api.py"
    script.write_text(
        "import collab_core.client as flare\n"
        "flare.init()\n"
        "while flare.is_running():\n"
        "    m = flare.receive()\n"
        "    if m is None:\n"
        "        break\n"
        "    flare.send(flare.FLModel(params={k: v + 1 for k, v in m.params.items()}))\n"
    )

    class Driver:
        @collab.main
        def run(self):
            out = dict(collab.clients.execute(fl_model=FLModel(params={"w": 1.0, "bn.mean": 5.0})))
            collab.clients.stop()
            return {s: m.params for s, m in out.items()}

    recipe = CollabRecipe(job_name="capi", server=Driver(), train_script=str(script), min_clients=2)
    recipe.add_client_output_filter("exclude_vars", tasks=["execute"], options={"names": ["bn.*"]})
    assert _run(recipe) == {"site-1": {"w": 2.0}, "site-2": {"w": 2.0}}


def test_registered_filters_by_name_with_options():
    recipe = _recipe("echo")
    recipe.add_client_output_filter("exclude_vars", options={"names": ["bn.*"]})
    assert _run(recipe) == {"site-1": {"a": 1, "b": 2}, "site-2": {"a": 1, "b": 2}}
    keep = _recipe("echo")
    keep.add_server_output_filter("include_vars", options={"names": ["a", "bn.*"]})
    assert _run(keep) == {"site-1": {"a": 1, "bn.mean": 3}, "site-2": {"a": 1, "bn.mean": 3}}


def test_bad_filters_fail_when_added():
    recipe = _recipe()
    with pytest.raises(RecipeError, match="no call/result filter method"):
        recipe.add_client_output_filter(object())
    with pytest.raises(RecipeError, match="is a class"):
        recipe.add_client_output_filter(Clip)
    with pytest.raises(RecipeError, match="is a module; a filter is an object"):
        recipe.add_client_output_filter(np)
    with pytest.raises(Exception, match="no filter named 'nope'.*exclude_vars"):
        recipe.add_client_output_filter("nope")
    with pytest.raises(RecipeError, match="tasks must be"):
        recipe.add_client_output_filter(Clip(), tasks=[])
    with pytest.raises(RecipeError, match="clients names client sites"):
        recipe.add_client_output_filter(Clip(), clients=["server"])
    with pytest.raises(RecipeError, match="options= is for a registered filter"):
        recipe.add_client_output_filter(Clip(), options={"x": 1})
    with pytest.raises(RecipeError, match="JSON"):
        recipe.add_client_output_filter("exclude_vars", options={"names": object()})

    class TwoCallFilters:
        @collab.call_filter
        def a(self, kw):
            return kw

        @collab.call_filter
        def b(self, kw):
            return kw

    with pytest.raises(RecipeError, match="2 @collab.call_filter methods"):
        recipe.add_server_output_filter(TwoCallFilters())


def test_the_directional_form_wins_over_the_plain_one():
    class Both:
        @collab.result_filter
        def plain(self, result):
            return result * 0 + 1

        @collab.in_result_filter
        def incoming(self, result):
            return result * 0 + 2

    out_side = _recipe()
    out_side.add_client_output_filter(Both())
    assert _run(out_side)["site-1"] == [1.0] * 3
    in_side = _recipe()
    in_side.add_server_input_filter(Both())
    assert _run(in_side)["site-1"] == [2.0] * 3


class Unexportable:
    def __init__(self, bound):
        self.limit = bound  # not stored under its parameter's name

    @collab.result_filter
    def f(self, result):
        return result


def test_a_filter_that_cannot_be_exported_says_which_and_why(tmp_path):
    from collab_core import ExportError

    recipe = _recipe()
    recipe.add_client_output_filter(Unexportable(1.0))
    assert _run(recipe)["site-1"] == [2.0] * 3  # SimEnv needs no export
    with pytest.raises(ExportError, match="Unexportable: its constructor parameter 'bound' is not stored"):
        recipe.export(tmp_path / "job")

    class Local:
        @collab.result_filter
        def f(self, result):
            return result

    local = _recipe()
    local.add_server_input_filter(Local())
    with pytest.raises(ExportError, match="cannot export the server input filter: class .*Local is defined "
                                          "inside a function"):
        local.export(tmp_path / "job2")


def test_filters_travel_in_an_exported_job_and_run_again(tmp_path):
    recipe = _recipe()
    recipe.add_client_output_filter(Clip(1.5), tasks=["train"], clients=["site-2"])
    recipe.add_server_input_filter("exclude_vars", options={"names": ["x"]})
    path = recipe.export(tmp_path / "job")
    config = read_job_config(path)
    assert config["filters"][0] == {
        "side": "client", "direction": "out", "tasks": ["train"], "clients": ["site-2"], "instance": 0,
        "object": {"module": Clip.__module__, "class": "Clip", "args": {"bound": 1.5}},
    }
    assert config["filters"][1] == {"side": "server", "direction": "in", "name": "exclude_vars",
                                    "options": {"names": ["x"]}, "instance": 1}
    again = load_job(path)
    assert _run(again) == {"site-1": [2.0] * 3, "site-2": [1.5] * 3}


# -- add_server_config / add_client_config, add_decomposers, process_env ---------------------------


class ConfigClient:
    @collab.publish
    def config(self):
        return {k: collab.get_app_prop(k) for k in ("lr", "data", "server_key")}


class ConfigServer:
    @collab.main
    def run(self):
        return {"server": collab.get_app_prop("server_key"), "lr_on_server": collab.get_app_prop("lr"),
                **dict(collab.clients.config())}


def test_add_server_and_client_config_are_app_props(tmp_path):
    recipe = CollabRecipe(job_name="cfg", server=ConfigServer(), client=ConfigClient(), min_clients=3)
    recipe.add_server_config({"server_key": [1, 2]})
    recipe.add_client_config({"lr": 0.1, "data": "/d"})
    recipe.add_client_config({"data": "/d3"}, clients=["site-3"])
    recipe.set_per_site_config({"site-2": {"lr": 0.5}})
    out = _run(recipe, n=3)
    assert out["server"] == [1, 2] and out["lr_on_server"] is None
    assert out["site-1"] == {"lr": 0.1, "data": "/d", "server_key": None}
    assert out["site-2"] == {"lr": 0.5, "data": "/d", "server_key": None}
    assert out["site-3"] == {"lr": 0.1, "data": "/d3", "server_key": None}
    assert recipe.configured_sites() == ["site-3", "site-2"]
    again = load_job(recipe.export(tmp_path / "job"))
    assert _run(again, n=3) == out
    with pytest.raises(RecipeError, match="dict"):
        recipe.add_server_config(["x"])
    with pytest.raises(RecipeError, match="JSON"):
        recipe.add_client_config({"x": object()})
    with pytest.raises(RecipeError, match="clients"):
        recipe.add_client_config({"x": 1}, clients="site-1")


@attrs.define
class Point:
    x: float
    y: float


def point_serializers():
    return [wire.Serializer(name="tests.Pair", type_names=(wire.qualified_name(Pair),),
                            encode=lambda p, ctx: [p.a, p.b], decode=lambda d, ctx: Pair(*d))]


class Pair:
    def __init__(self, a, b):
        self.a, self.b = a, b


class PointServer:
    @collab.main
    def run(self):
        out = dict(collab.clients.echo(Point(1.0, 2.0)))
        pairs = dict(collab.clients.echo(Pair(3, 4)))
        return {s: [type(v).__name__, v.x, v.y, type(pairs[s]).__name__, pairs[s].a] for s, v in out.items()}


def test_add_decomposers_registers_serializers_for_the_job_only():
    bare = CollabRecipe(job_name="points", server=PointServer(), client=Trainer(), min_clients=2)
    run = bare.execute(SimEnv(num_clients=2))
    assert run.status == "failed" and "Point" in run.error
    recipe = CollabRecipe(job_name="points", server=PointServer(), client=Trainer(), min_clients=2)
    recipe.add_decomposers([Point, point_serializers])
    assert _run(recipe) == {"site-1": ["Point", 1.0, 2.0, "Pair", 3], "site-2": ["Point", 1.0, 2.0, "Pair", 3]}
    assert Point not in wire.registered_types().values()  # unregistered when the job ended
    with pytest.raises(wire.WireError):
        wire.dumps(Pair(1, 2))
    with pytest.raises(RecipeError, match="cannot be found"):
        recipe.add_decomposers(["no_such_module_xyz.Thing"])
    with pytest.raises(RecipeError, match="import paths, attrs classes"):
        recipe.add_decomposers([42])
    with pytest.raises(RecipeError, match="by its import path"):
        recipe.add_decomposers([point_serializers()[0]])


seen = []


class EnvAware(CollabRecipe):
    def process_env(self, env):
        seen.append(type(env).__name__)
        self.set_server_prop("env", type(env).__name__)


class EnvServer:
    @collab.main
    def run(self):
        return collab.get_app_prop("env")


def test_process_env_sees_the_environment_before_deploy(tmp_path):
    seen.clear()
    recipe = EnvAware(job_name="envaware", server=EnvServer(), client=Trainer(), min_clients=1)
    run = recipe.execute(SimEnv(num_clients=1))
    assert run.status == "finished" and run.result == "SimEnv" and seen == ["SimEnv"]
    recipe.export(tmp_path / "job", env=SimEnv(num_clients=1))
    assert seen == ["SimEnv", "SimEnv"]
    recipe.export(tmp_path / "job2")
    assert seen == ["SimEnv", "SimEnv"]


WORKER_MODULE = """
import os
from collab_core import collab

@collab.publish
def train(weights, scale=1.0):
    return {"w": weights * scale, "worker_pid": os.getpid()}
"""


class WorkerServer:
    @collab.main
    def run(self):
        return {s: {"w": v["w"].tolist(), "worker_pid": v["worker_pid"], "filter_pid": v["filter_pid"]}
                for s, v in collab.clients.train(np.ones(2))}


class StampPid:
    @collab.result_filter
    def stamp(self, result):
        import os

        return {**result, "filter_pid": os.getpid()}


def test_filters_run_on_the_site_of_a_worker_group_once(tmp_path):
    pytest.importorskip("collab_torchrun")
    import importlib.util
    import os
    import sys

    path = tmp_path / "filters_worker_mod.py"
    path.write_text(WORKER_MODULE)
    spec = importlib.util.spec_from_file_location("filters_worker_mod", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["filters_worker_mod"] = module
    sys.path.insert(0, str(tmp_path))
    try:
        spec.loader.exec_module(module)
        recipe = CollabRecipe(job_name="trfilters", server=WorkerServer(), client=module, min_clients=2,
                              launch_external_process=True, command="python", subprocess_timeout=60)
        recipe.add_client_input_filter(Scale(3.0))  # once, on the site: the worker gets weights * 3
        recipe.add_client_output_filter(StampPid())
        run = recipe.execute(SimEnv(num_clients=2, workspace=tmp_path / "ws"))
    finally:
        sys.modules.pop("filters_worker_mod", None)
        sys.path.remove(str(tmp_path))
    assert run.status == "finished", run.error
    for site in ("site-1", "site-2"):
        out = run.result[site]
        assert out["w"] == [3.0, 3.0]  # filtered once (not again in the worker)
        assert out["filter_pid"] == os.getpid() != out["worker_pid"]  # the site's process, not the worker's


# -- Fox's names, as a Fox program uses them (nvflare/fox/examples/pt/filters2.py) -----------------

from collab_core import collab as fox  # noqa: E402 - the Fox spelling, as a ported program has it


class ModelFilter:
    """Fox's ModelFilter shape: four directional methods; the weights travel as a reference."""

    def __init__(self, model_arg_name: str):
        self.model_arg_name = model_arg_name
        self.log = []

    @fox.out_call_filter
    def prepare_weights_for_download(self, func_kwargs: dict):
        self.log.append(("out_call", fox.context.target_group_size))
        func_kwargs[self.model_arg_name] = {"ref": func_kwargs[self.model_arg_name].tolist()}
        return func_kwargs

    @fox.in_call_filter
    def download_weights(self, func_kwargs: dict):
        func_kwargs[self.model_arg_name] = np.array(func_kwargs[self.model_arg_name]["ref"])
        return func_kwargs

    @fox.out_result_filter
    def prepare_result_for_download(self, result):
        return {"ref": result.tolist()}

    @fox.in_result_filter
    def download_result(self, result):
        return np.array(result["ref"])


class RefServer:
    @fox.algo
    def run(self):
        return {s: v.tolist() for s, v in fox.clients.train(np.ones(2))}


def test_fox_filter_methods_with_patterns_and_one_kind_each():
    recipe = CollabRecipe(job_name="foxfilters", server=RefServer(), client=Trainer(), min_clients=2)
    model_filter = ModelFilter("weights")
    recipe.add_server_outgoing_call_filters(pattern="*.train", filters=[model_filter])
    recipe.add_server_incoming_result_filters(pattern="*.train", filters=[model_filter])
    recipe.add_client_incoming_call_filters(pattern="*.train", filters=[model_filter])
    recipe.add_client_outgoing_result_filters(pattern="*.train", filters=[model_filter])
    assert _run(recipe) == {"site-1": [2.0, 2.0], "site-2": [3.0, 3.0]}
    # the server runs the recipe's object itself; fox.context in a filter is its FilterContext
    assert model_filter.log == [("out_call", 2), ("out_call", 2)]
    # only the call half of the server's outgoing filters was added
    spec_kinds = [(s.side, s.direction, s.kinds) for s in recipe.build_job().filters]
    assert spec_kinds == [("server", "out", ("call",)), ("server", "in", ("result",)),
                          ("client", "in", ("call",)), ("client", "out", ("result",))]

    half = CollabRecipe(job_name="foxhalf", server=RefServer(), client=Trainer(), min_clients=2)
    half.add_server_outgoing_call_filters(pattern="*.train", filters=[ModelFilter("weights")])
    half.add_client_incoming_call_filters(pattern="*.train", filters=[ModelFilter("weights")])
    assert _run(half) == {"site-1": [2.0, 2.0], "site-2": [3.0, 3.0]}  # results not filtered
    with pytest.raises(RecipeError, match="no result filter method"):
        half.add_client_outgoing_result_filters("*", [Scale()])
