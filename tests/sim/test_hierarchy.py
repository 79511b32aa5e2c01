"""Hierarchical federations in SimEnv: num_clients=(3, 2) and explicit parents, collab.child_clients /
has_children / leaf_clients on every site, parents aggregating their children's results (NVFlare's
fed_avg_h), and the errors of bad shapes."""

from __future__ import annotations

import re

import numpy as np
import pytest

from collab_core import CollabError, CollabRecipe, RecipeError, collab
from collab_core.topology import Topology, check_parents, from_shape
from collab_sim import SimEnv

LINE = re.compile(r"^collab \| (.*)$")
TOP = ["site-1", "site-2", "site-3"]
CHILDREN = {"site-1": ["site-1-1", "site-1-2"], "site-2": ["site-2-1", "site-2-2"],
            "site-3": ["site-3-1", "site-3-2"]}
LEAVES = [c for t in TOP for c in CHILDREN[t]]


# -- NVFlare's reference: nvflare/fox/examples/np (avg_h.py, client.py NPHierarchicalTrainer) -------


class NPHierarchicalTrainer:
    """NVFlare's hierarchical trainer with our import names: a parent averages its children."""

    def __init__(self, delta: float):
        self.delta = delta

    @collab.publish
    def train(self, current_round, weights):
        if collab.is_aborted:
            return None
        if collab.has_children:
            total = 0
            results = collab.child_clients.train(current_round, weights)
            for _, v in results:
                total += v
            return total / len(results)
        return weights + self.delta

    @collab.publish
    def evaluate(self, model):
        return float(np.sum(model))


class NPHierarchicalFedAvg:
    def __init__(self, initial_model, num_rounds=10):
        self.num_rounds = num_rounds
        self._initial_model = np.array(initial_model, dtype=np.float32)
        self.scores = []

    @collab.main
    def execute(self):
        current_model = self._initial_model
        for i in range(self.num_rounds):
            current_model = self._do_one_round(i, current_model)
            results = collab.leaf_clients.evaluate(current_model)
            self.scores.append((len(results), sum(v for _, v in results) / len(results)))
        return {"model": current_model, "scores": self.scores}

    def _do_one_round(self, r, current_model):
        total = 0
        results = collab.child_clients.train(r, current_model)
        for _, v in results:
            total += v
        return total / len(results)


def test_nvflare_fed_avg_h_reference(tmp_path):
    initial = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    recipe = CollabRecipe(job_name="fedavg_h", server=NPHierarchicalFedAvg(initial, num_rounds=3),
                          client=NPHierarchicalTrainer(delta=1.0), min_clients=9)
    run = recipe.execute(SimEnv(num_clients=(3, 2), workspace=tmp_path))
    assert run.status == "finished", run.error
    # each leaf adds delta, each parent and the server average: initial + rounds * delta
    np.testing.assert_array_equal(run.result["model"], np.array(initial, dtype=np.float32) + 3)
    # evaluate went to the 6 leaves only, each scoring the round's model
    assert [n for n, _ in run.result["scores"]] == [6, 6, 6]
    assert [s for _, s in run.result["scores"]] == [45.0 + 9 * r for r in (1, 2, 3)]


# -- who calls whom, and weighted aggregation -------------------------------------------------------


def leaf_data(site):
    """A leaf's local update and sample count, different for every leaf."""
    k = sum(int(x) for x in site.split("-")[1:])  # site-2-1 -> 3
    return np.full(4, float(k)) / 7 + np.arange(4), 10 * k + len(site)


class WeightedTrainer:
    @collab.publish
    def train(self, w):
        if collab.has_children:
            results = collab.child_clients.train(w)
            n = sum(r["n"] for _, r in results)
            agg = sum(r["w"] * (r["n"] / n) for _, r in results)
            trail = [t for _, r in results for t in r["trail"]]
            return {"w": agg, "n": n, "trail": [(collab.site_name, collab.caller), *trail]}
        delta, n = leaf_data(collab.site_name)
        return {"w": w + delta, "n": n, "trail": [(collab.site_name, collab.caller)]}

    @collab.publish
    def where(self):
        return {"has_children": collab.has_children,
                "children": collab.child_clients.names if collab.has_children else None,
                "leaves": collab.leaf_clients.names, "clients": collab.clients.names,
                "others": collab.other_clients.names}

    @collab.publish
    def leaf_children(self):
        collab.child_clients  # noqa: B018  (raises on a leaf)


class WeightedFedAvg:
    def __init__(self, rounds=2):
        self.rounds = rounds

    @collab.main
    def run(self):
        w = np.zeros(4)
        trails = []
        for _ in range(self.rounds):
            results = collab.child_clients.train(w)
            n = sum(r["n"] for _, r in results)
            w = sum(r["w"] * (r["n"] / n) for _, r in results)
            trails.append({"answered": results.sites, "trail": sorted(t for _, r in results for t in r["trail"])})
        where = dict(collab.clients.where())
        where["server"] = {"has_children": collab.has_children, "children": collab.child_clients.names,
                           "leaves": collab.leaf_clients.names, "clients": collab.clients.names}
        return {"w": w, "trails": trails, "where": where}


def expected_weighted(leaves, rounds):
    w = np.zeros(4)
    for _ in range(rounds):
        ns = [leaf_data(s)[1] for s in leaves]
        w = sum((w + leaf_data(s)[0]) * (n / sum(ns)) for s, n in zip(leaves, ns, strict=True))
    return w


def test_parents_aggregate_their_children_and_the_server_sees_only_top_level(tmp_path, capsys):
    recipe = CollabRecipe(job_name="weighted_h", server=WeightedFedAvg(rounds=2), client=WeightedTrainer(),
                          min_clients=9)
    run = recipe.execute(SimEnv(num_clients=(3, 2), workspace=tmp_path))
    assert run.status == "finished", run.error
    # the hierarchical weighted mean equals the flat weighted mean over the leaves' data
    np.testing.assert_allclose(run.result["w"], expected_weighted(LEAVES, 2), rtol=1e-12)
    for rnd in run.result["trails"]:
        assert rnd["answered"] == TOP  # the server's group: the top-level sites only
        # every top-level site was called by the server, every leaf by its own parent
        expected = sorted([(t, "server") for t in TOP] + [(c, t) for t in TOP for c in CHILDREN[t]])
        assert [tuple(x) for x in rnd["trail"]] == expected
    # the console counts every site and says how they nest
    lines = [m.group(1) for ln in capsys.readouterr().err.splitlines() if (m := LINE.match(ln))]
    assert lines[0] == (f"job weighted_h: SimEnv with 9 client(s) in a hierarchy (3 top-level, 2 levels); "
                        f"workspace {run.workspace}")


def test_child_clients_has_children_leaf_clients_on_every_site(tmp_path):
    recipe = CollabRecipe(job_name="where_h", server=WeightedFedAvg(rounds=1), client=WeightedTrainer(),
                          min_clients=9)
    run = recipe.execute(SimEnv(num_clients=(3, 2), workspace=tmp_path))
    assert run.status == "finished", run.error
    where = run.result["where"]
    every = TOP + LEAVES  # collab.clients: every site of every level, level by level (as NVFlare)
    assert where["server"] == {"has_children": True, "children": TOP, "leaves": LEAVES, "clients": every}
    for site in TOP:
        assert where[site] == {"has_children": True, "children": CHILDREN[site], "leaves": LEAVES,
                               "clients": every, "others": [s for s in every if s != site]}
    for site in LEAVES:
        assert where[site] == {"has_children": False, "children": None, "leaves": LEAVES, "clients": every,
                               "others": [s for s in every if s != site]}


class AskLeaf:
    @collab.main
    def run(self):
        try:
            collab.clients["site-2-1"].leaf_children()
        except CollabError as exc:
            return str(exc)
        return "no error"


def test_child_clients_on_a_leaf_names_the_fix(tmp_path):
    recipe = CollabRecipe(job_name="leaf_h", server=AskLeaf(), client=WeightedTrainer(), min_clients=1)
    run = recipe.execute(SimEnv(num_clients=(3, 2), workspace=tmp_path))
    assert run.status == "finished", run.error
    assert "site-2-1 has no child clients" in run.result and "collab.has_children" in run.result


def test_a_flat_federation_is_one_level(tmp_path):
    recipe = CollabRecipe(job_name="flat_h", server=WeightedFedAvg(rounds=1), client=WeightedTrainer(),
                          min_clients=3)
    run = recipe.execute(SimEnv(num_clients=3, workspace=tmp_path))
    assert run.status == "finished", run.error
    where = run.result["where"]
    assert where["server"]["children"] == where["server"]["leaves"] == TOP
    assert where["site-2"]["has_children"] is False and where["site-2"]["leaves"] == TOP


def test_three_levels_and_uneven_explicit_parents(tmp_path):
    # (2, 2, 2): 2 top-level sites, 4 below them, 8 leaves, named as NVFlare names them
    recipe = CollabRecipe(job_name="deep_h", server=WeightedFedAvg(rounds=1), client=WeightedTrainer(),
                          min_clients=14)
    run = recipe.execute(SimEnv(num_clients=(2, 2, 2), workspace=tmp_path))
    assert run.status == "finished", run.error
    leaves = [f"site-{a}-{b}-{c}" for a in (1, 2) for b in (1, 2) for c in (1, 2)]
    assert run.result["where"]["server"]["leaves"] == leaves
    assert run.result["where"]["site-2-1"]["children"] == ["site-2-1-1", "site-2-1-2"]
    np.testing.assert_allclose(run.result["w"], expected_weighted(leaves, 1), rtol=1e-12)
    assert ("site-1-2-2", "site-1-2") in [tuple(t) for t in run.result["trails"][0]["trail"]]

    # uneven: hospital-a has three clinics, hospital-b one; weighted means still equal the flat one
    names = ["site-1", "site-2", "site-1-1", "site-1-2", "site-1-3", "site-2-1"]
    env = SimEnv(clients=names, parents={"site-1-1": "site-1", "site-1-2": "site-1", "site-1-3": "site-1",
                                         "site-2-1": "site-2"}, workspace=tmp_path / "uneven")
    run = CollabRecipe(job_name="uneven_h", server=WeightedFedAvg(rounds=2), client=WeightedTrainer(),
                       min_clients=6).execute(env)
    assert run.status == "finished", run.error
    np.testing.assert_allclose(run.result["w"], expected_weighted(names[2:], 2), rtol=1e-12)
    assert run.result["where"]["site-1"]["children"] == ["site-1-1", "site-1-2", "site-1-3"]


def test_plain_nested_mean_is_nvflares_avg_h_not_the_flat_mean(tmp_path):
    """NVFlare's avg_h averages per parent: with uneven branching it weighs a lone child more."""

    class Plain:
        @collab.publish
        def train(self, w):
            if collab.has_children:
                results = collab.child_clients.train(w)
                return sum(v for _, v in results) / len(results)
            return w + float(collab.site_name[1:])  # a1 -> 1.0

    class Server:
        @collab.main
        def run(self):
            results = collab.child_clients.train(0.0)
            return sum(v for _, v in results) / len(results)

    env = SimEnv(clients=["a", "b", "a1", "a2", "a3", "b9"], parents={"a1": "a", "a2": "a", "a3": "a", "b9": "b"},
                 workspace=tmp_path)
    run = CollabRecipe(job_name="plain_h", server=Server(), client=Plain(), min_clients=6).execute(env)
    assert run.status == "finished", run.error
    assert run.result == pytest.approx(((1 + 2 + 3) / 3 + 9) / 2)  # not (1+2+3+9)/4


# -- min_clients and bad shapes ---------------------------------------------------------------------


def test_min_clients_counts_every_site_of_every_level(tmp_path):
    ok = CollabRecipe(job_name="min_h", server=WeightedFedAvg(rounds=1), client=WeightedTrainer(), min_clients=9)
    assert ok.execute(SimEnv(num_clients=(3, 2), workspace=tmp_path)).status == "finished"
    too_many = CollabRecipe(job_name="min_h", server=WeightedFedAvg(rounds=1), client=WeightedTrainer(),
                            min_clients=10)
    with pytest.raises(RecipeError, match=r"min_clients=10 but SimEnv has 9 client"):
        too_many.execute(SimEnv(num_clients=(3, 2), workspace=tmp_path))


@pytest.mark.parametrize("shape, message", [
    ((0, 2), r"num_clients=\(0, 2\): the number of top-level sites must be >= 1, got 0"),
    ((3, -1), r"num_clients=\(3, -1\): the number of children of each top-level site must be >= 1, got -1"),
    ((3, 0), r"the number of children of each top-level site must be >= 1, got 0"),
    ((2, 2, 0), r"the number of children of each site at level 2 must be >= 1, got 0"),
    ((3, "2"), r"must be an int, got str '2'"),
    ((3, 2.0), r"must be an int, got float 2.0"),
    ((3, True), r"must be an int, got bool True"),
    ((), r"num_clients=\(\) names no level"),
    ("3x2", r"num_clients must be an int or a tuple of ints, got str '3x2'"),
    ({3: 2}, r"got dict"),
    (0, r"needs num_clients >= 1, got 0"),
    ((100, 100, 100), r"makes more than 10000 sites"),
])
def test_bad_shapes_name_the_fix(shape, message):
    with pytest.raises(RecipeError, match=message) as info:
        SimEnv(num_clients=shape)
    assert "SimEnv(num_clients=(3, 2)) for 3 top-level sites with 2 children each" in str(info.value) \
        or "10000" in str(info.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"clients": ["a", "b"], "parents": {"b": "b"}}, r"'b' cannot be its own parent"),
    ({"clients": ["a", "b", "c"], "parents": {"b": "c", "c": "b"}}, r"form a loop"),
    ({"clients": ["a", "b"], "parents": {"b": "zz"}}, r"'zz' is not a site of this job"),
    ({"clients": ["a", "b"], "parents": {"b": 3}}, r"the parent of 'b' must be a site name or None"),
    ({"clients": ["a", "b"], "parents": ["b", "a"]}, r"must map each child site to its parent"),
    ({"clients": ["a", "b"], "parents": {"../x": "a"}}, r"is not a client site name"),
    ({"parents": {"site-1-1": "site-1"}}, r"parents=\.\.\.\) needs clients=\[names\]"),
    ({"num_clients": (3, 2), "clients": ["a"]}, r"either num_clients=\(shape\) or clients=\[names\]"),
])
def test_bad_parents_are_refused(kwargs, message):
    with pytest.raises(RecipeError, match=message):
        SimEnv(**kwargs)


def test_topology_helpers():
    t = from_shape((3, 2))
    assert list(t.sites) == TOP + LEAVES and t.top_level == TOP and t.leaves == LEAVES
    assert t.children_of("server") == TOP and t.children_of("site-3") == CHILDREN["site-3"]
    assert t.parent_of("site-3-2") == "site-3" and t.parent_of("site-3") is None and t.depth() == 2
    assert from_shape(4).is_hierarchical is False and from_shape(4).describe() is None
    # a site whose parent is not in the job (it did not load) is top-level
    partial = Topology(["site-1-1", "site-1-2", "site-2", "site-2-1"], from_shape((2, 2)).parents)
    assert partial.top_level == ["site-1-1", "site-1-2", "site-2"] and partial.children_of("site-2") == ["site-2-1"]
    # a parent of None or "server" means top-level; a deep chain is refused
    assert check_parents({"a": None, "b": "server", "c": "a"}) == {"c": "a"}
    chain = {f"s{i}": f"s{i - 1}" for i in range(1, 40)}
    with pytest.raises(RecipeError, match="deeper than 32 levels"):
        check_parents(chain)
