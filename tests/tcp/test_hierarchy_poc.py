"""Hierarchical federations over TCP: PocEnv(num_clients=(3, 2)) runs a server and 9 site processes;
a parent's calls to its children are site-to-site calls relayed by the server; the topology travels
in the submit and deploy messages and is checked at both ends (hostile input)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from collab_core import wire
from collab_core.errors import RecipeError
from collab_core.job import pack_job
from collab_tcp.admin import AdminError

from .helpers import TIMEOUT, Cluster, export_job

TOP = ["site-1", "site-2", "site-3"]
CHILDREN = {t: [f"{t}-1", f"{t}-2"] for t in TOP}
LEAVES = [c for t in TOP for c in CHILDREN[t]]

JOB = textwrap.dedent("""
    import numpy as np
    from collab_core import collab

    def leaf_data(site):
        k = sum(int(x) for x in site.split("-")[1:])
        return np.full(4, float(k)) / 7 + np.arange(4), 10 * k + len(site)

    class Trainer:
        @collab.publish
        def train(self, w):
            if collab.has_children:
                results = collab.child_clients.train(w)
                n = sum(r["n"] for _, r in results)
                agg = sum(r["w"] * (r["n"] / n) for _, r in results)
                trail = [t for _, r in results for t in r["trail"]]
                return {"w": agg, "n": n, "trail": [[collab.site_name, collab.caller], *trail]}
            delta, n = leaf_data(collab.site_name)
            return {"w": w + delta, "n": n, "trail": [[collab.site_name, collab.caller]]}

        @collab.publish
        def where(self):
            return {"has_children": collab.has_children,
                    "children": collab.child_clients.names if collab.has_children else None,
                    "leaves": collab.leaf_clients.names, "clients": sorted(collab.clients.names)}

    class FedAvg:
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
                trails.append({"answered": results.sites,
                               "trail": sorted(t for _, r in results for t in r["trail"])})
            where = dict(collab.clients.where())
            where["server"] = {"has_children": collab.has_children, "children": collab.child_clients.names,
                               "leaves": collab.leaf_clients.names, "clients": sorted(collab.clients.names)}
            return {"w": w.tolist(), "trails": trails, "where": where}
""")

DRIVER = JOB + textwrap.dedent("""
    if __name__ == "__main__":
        import json, sys
        from collab_core import CollabRecipe
        from collab_sim import SimEnv
        from collab_tcp import PocEnv

        def recipe():
            return CollabRecipe(job_name="poc_h", server=FedAvg(rounds=2), client=Trainer(), min_clients=9)

        env = PocEnv(num_clients=(3, 2), workspace=sys.argv[1])
        print("ENV", repr(env))
        run = recipe().execute(env)
        assert run.status == "finished", run.error
        sim = recipe().execute(SimEnv(num_clients=(3, 2), progress="off"))
        with open(sys.argv[2], "w") as f:
            json.dump({"poc": run.result, "sim_w": sim.result["w"], "sites": run.sites}, f)
""")


def expected_weighted(leaves, rounds):
    def leaf_data(site):
        k = sum(int(x) for x in site.split("-")[1:])
        return np.full(4, float(k)) / 7 + np.arange(4), 10 * k + len(site)

    w = np.zeros(4)
    for _ in range(rounds):
        ns = [leaf_data(s)[1] for s in leaves]
        w = sum((w + leaf_data(s)[0]) * (n / sum(ns)) for s, n in zip(leaves, ns, strict=True))
    return w


def test_poc_hierarchical_fedavg_in_real_processes(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, str(driver), str(tmp_path / "ws"), str(out)],
                          capture_output=True, text=True, timeout=TIMEOUT * 10, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    data = json.loads(out.read_text())
    r = data["poc"]
    # the parents' weighted means of their children equal the flat weighted mean of the leaves,
    # bit for bit the same as SimEnv's
    np.testing.assert_allclose(r["w"], expected_weighted(LEAVES, 2), rtol=1e-12)
    assert r["w"] == data["sim_w"]
    expected_trail = sorted([[t, "server"] for t in TOP] + [[c, t] for t in TOP for c in CHILDREN[t]])
    for rnd in r["trails"]:
        assert rnd["answered"] == TOP  # the server called the top-level sites only
        assert rnd["trail"] == expected_trail  # each leaf was called by its parent, through the server
    every = sorted(TOP + LEAVES)
    where = r["where"]
    assert where["server"] == {"has_children": True, "children": TOP, "leaves": LEAVES, "clients": every}
    for site in TOP:
        assert where[site] == {"has_children": True, "children": CHILDREN[site], "leaves": LEAVES, "clients": every}
    for site in LEAVES:
        assert where[site] == {"has_children": False, "children": None, "leaves": LEAVES, "clients": every}
    assert sorted(data["sites"]) == sorted(["server", *every])
    assert "ENV PocEnv(num_clients=9, hierarchy: 3 top-level, 2 levels)" in proc.stdout
    assert "PocEnv with 9 client(s) in a hierarchy (3 top-level, 2 levels)" in proc.stderr


def test_poc_bad_shapes_name_the_fix():
    from collab_tcp import PocEnv

    for shape, message in [((0, 2), "top-level sites must be >= 1, got 0"),
                           ((3, -1), "children of each top-level site must be >= 1, got -1"),
                           ((3, "2"), "must be an int, got str '2'")]:
        with pytest.raises(RecipeError, match=message) as info:
            PocEnv(num_clients=shape)
        assert "PocEnv(num_clients=(3, 2)) for 3 top-level sites with 2 children each" in str(info.value)
    with pytest.raises(RecipeError, match="form a loop"):
        PocEnv(clients=["a", "b"], parents={"a": "b", "b": "a"})


# -- the topology on the wire: an in-process server and site agents on threads ------------------------


@pytest.fixture
def cluster(kits, tmp_path):
    c = Cluster(kits, tmp_path / "cluster")
    try:
        for site in ("site-1", "site-2", "site-3"):
            c.start_site(site)
        yield c
    finally:
        c.close()


def submit(cluster, job_dir, **kwargs):
    with cluster.admin() as admin:
        job = admin.submit(job_dir, wait_timeout=20, **kwargs)
        return admin.follow(job, timeout=90)


def test_an_admin_submits_a_hierarchy_with_explicit_parents(cluster, tmp_path):
    job_dir = export_job(tmp_path, JOB, server="FedAvg(rounds=1)", client="Trainer()", job_name="explicit_h",
                         min_clients=3)
    done = submit(cluster, job_dir, sites=["site-1", "site-2", "site-3"],
                  parents={"site-2": "site-1", "site-3": "site-1"})
    assert done["status"] == "finished", done["error"]
    where = done["result"]["where"]
    assert where["server"]["children"] == ["site-1"] and where["server"]["leaves"] == ["site-2", "site-3"]
    assert where["site-1"]["children"] == ["site-2", "site-3"] and where["site-3"]["has_children"] is False
    assert sorted(map(tuple, done["result"]["trails"][0]["trail"])) == [
        ("site-1", "server"), ("site-2", "site-1"), ("site-3", "site-1")]
    np.testing.assert_allclose(done["result"]["w"], expected_weighted(["site-2", "site-3"], 1), rtol=1e-12)


@pytest.mark.parametrize("parents, sites, message", [
    ({"site-2": "site-3", "site-3": "site-2"}, ["site-1", "site-2", "site-3"], "form a loop"),
    ({"site-2": "site-9"}, ["site-1", "site-2"], "'site-9' is not a site of this job"),
    ({"site-2": "site-1"}, None, "a hierarchical job must name its sites"),
    ({"server": "site-1"}, ["site-1", "site-2"], "'server' is not a client site name"),
    ({"site-2": ["site-1"]}, ["site-1", "site-2"], "the parent of 'site-2' must be a site name"),
    ([["site-2", "site-1"]], ["site-1", "site-2"], "must map each child site to its parent"),
    ({f"s{i}": f"s{i - 1}" for i in range(1, 40)}, [f"s{i}" for i in range(40)], "deeper than 32 levels"),
])
def test_the_server_refuses_a_bad_hierarchy(cluster, tmp_path, parents, sites, message):
    job_dir = export_job(tmp_path, JOB, server="FedAvg(rounds=1)", client="Trainer()", job_name="bad_h")
    with cluster.admin() as admin:
        with pytest.raises(AdminError, match="job refused") as err:
            admin._request({"t": "submit", "files": pack_job(job_dir),
                            "sites": sites, "parents": parents, "wait_timeout": 5, "deploy_timeout": 5,
                            "follow": False}, "submitted")
    assert message in str(err.value)
    # the server still runs the next (good) job
    done = submit(cluster, job_dir, sites=["site-1", "site-2"], parents={"site-2": "site-1"})
    assert done["status"] == "finished", done["error"]


def test_a_site_refuses_a_deploy_with_a_bad_hierarchy(cluster, tmp_path, monkeypatch):
    """A server (or anything between) that sends a hostile topology: the site checks it and does not
    load the job."""
    server = cluster.server
    real = type(server)._deploy_to

    def tamper(self, job, sites):
        if job.deploy_info is not None:
            job.deploy_info["parents"] = {"site-2": "site-2"}
        return real(self, job, sites)

    monkeypatch.setattr(type(server), "_deploy_to", tamper)
    job_dir = export_job(tmp_path, JOB, server="FedAvg(rounds=1)", client="Trainer()", job_name="tampered_h")
    done = submit(cluster, job_dir, sites=["site-1", "site-2"], parents={"site-2": "site-1"})
    assert done["status"] == "failed"
    assert "only 0 of 2 sites loaded the job" in done["error"]
    assert "RecipeError: the deploy message" in done["error"] and "cannot be its own parent" in done["error"]


def test_collab_submit_parents(cluster, tmp_path, capsys):
    from collab_core.cli import main

    job_dir = export_job(tmp_path, JOB, server="FedAvg(rounds=1)", client="Trainer()", job_name="cli_h",
                         min_clients=3)
    server = f"127.0.0.1:{cluster.address[1]}"
    base = ["submit", str(job_dir), "--kit", str(cluster.kits.admin.path), "--server", server, "--json",
            "--workspace", str(tmp_path / "submit-ws")]
    result_file = tmp_path / "result.collab"
    code = main([*base, "--sites", "site-1,site-2,site-3", "--parents", "site-3=site-2", "--result", str(result_file)])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    assert json.loads(out.out[out.out.index("{"):])["status"] == "finished"
    with open(result_file, "rb") as f:
        where = wire.read_frame(f)["where"]
    assert where["server"]["children"] == ["site-1", "site-2"]
    assert where["site-2"]["children"] == ["site-3"] and where["server"]["leaves"] == ["site-1", "site-3"]
    # a malformed pair, and a parent outside the job's sites: errors that say what to write
    assert main([*base, "--sites", "site-1,site-2", "--parents", "site-2"]) == 1
    assert "--parents takes CHILD=PARENT pairs separated by commas" in capsys.readouterr().err
    assert main([*base, "--sites", "site-1,site-2", "--parents", "site-2=site-7"]) == 1
    assert "job refused: the job's parents: 'site-7' is not a site of this job" in capsys.readouterr().err


def test_prod_env_runs_a_hierarchy_on_a_running_server(cluster, tmp_path, capsys):
    from collab_core import CollabRecipe
    from collab_tcp import ProdEnv

    from .helpers import job_module

    kit = cluster.kits.admin.with_server(*cluster.address)
    with job_module(tmp_path, JOB) as mod:
        recipe = CollabRecipe(job_name="prod_h", server=mod.FedAvg(rounds=2), client=mod.Trainer(), min_clients=3)
        env = ProdEnv(kit, sites=["site-1", "site-2", "site-3"], parents={"site-1": "site-3", "site-2": "site-3"},
                      workspace=tmp_path / "prod", job_timeout=90)
        run = recipe.execute(env)
    assert run.status == "finished", run.error
    assert run.result["where"]["server"]["children"] == ["site-3"]
    assert run.result["where"]["site-3"]["children"] == ["site-1", "site-2"]
    np.testing.assert_allclose(run.result["w"], expected_weighted(["site-1", "site-2"], 2), rtol=1e-12)
    assert "with 3 client(s) in a hierarchy (1 top-level, 2 levels)" in capsys.readouterr().err
    # a shape names the sites as SimEnv and PocEnv do; parents without sites is an error naming the fix
    shaped = ProdEnv(kit, num_clients=(3, 2))
    assert shaped.sites == TOP + LEAVES and shaped.topology.children_of("site-2") == CHILDREN["site-2"]
    with pytest.raises(RecipeError, match=r"ProdEnv\(parents=\.\.\.\) needs sites=\[names\]"):
        ProdEnv(kit, parents={"site-2": "site-1"})


FAILING_PARENT = JOB + textwrap.dedent("""
    class BrokenParent(Trainer):
        @collab.init
        def setup(self):
            if collab.site_name == "site-1":
                raise RuntimeError("site-1 cannot load its data")
""")


def test_children_of_a_parent_that_did_not_load_answer_to_the_server(cluster, tmp_path):
    job_dir = export_job(tmp_path, FAILING_PARENT, server="FedAvg(rounds=1)", client="BrokenParent()",
                         job_name="orphans_h", min_clients=2)
    done = submit(cluster, job_dir, sites=["site-1", "site-2", "site-3"],
                  parents={"site-2": "site-1", "site-3": "site-1"})
    assert done["status"] == "finished", done["error"]
    assert done["participants"] == ["site-2", "site-3"]
    where = done["result"]["where"]
    # site-1 is gone: the server reaches its children directly
    assert where["server"]["children"] == ["site-2", "site-3"] and where["server"]["leaves"] == ["site-2", "site-3"]
    assert sorted(map(tuple, done["result"]["trails"][0]["trail"])) == [("site-2", "server"), ("site-3", "server")]
    np.testing.assert_allclose(done["result"]["w"], expected_weighted(["site-2", "site-3"], 1), rtol=1e-12)
