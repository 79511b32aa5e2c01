"""Filters in PocEnv: they travel in the job folder (job.json by import path and constructor
arguments, or by registered name), each site process builds its own, and they run on the right
side of real sockets -- output filters before the bytes are made, input filters after they are
read. Also add_server_config/add_client_config, add_decomposers and process_env there."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid

import pytest

from collab_core.job import pack_job
from collab_tcp.admin import AdminError

from .helpers import TIMEOUT, export_job
from .test_hostile_jobs import (  # the locked-site fixtures, shared with those tests
    SERVER_ONLY,
    locked_site,  # noqa: F401 - a fixture
    run_on_site_3,
    server,  # noqa: F401 - a fixture
    submit_raw,
    with_config,
)

FILTERS = textwrap.dedent("""
    import os

    import attrs
    import numpy as np

    from collab_core import collab


    @attrs.define
    class Point:                      # travels only because the recipe adds it as a decomposer
        x: float
        y: float


    class Opaque:                     # never registered: only the codec's dicts cross the wire
        def __init__(self, values):
            self.values = values


    class Clip:
        def __init__(self, bound):
            self.bound = bound

        @collab.result_filter
        def clip(self, result, context):
            return {"clipped": np.clip(result, -self.bound, self.bound), "by": context.site,
                    "pid": os.getpid(), "peer": context.peer, "direction": context.direction}


    class Inspect:
        '''On the server: records what arrives (after decoding) in a file, changes nothing.'''

        def __init__(self, path):
            self.path = path

        @collab.in_result_filter
        def record(self, result, context):
            with open(self.path, "a") as f:
                f.write(f"{context.method} {context.peer} {type(result).__name__} {os.getpid()}\\n")
            return result


    class Codec:
        '''One object, both directions, on both sides: Opaque <-> dict.'''

        @collab.out_call_filter
        def encode_call(self, kwargs):
            return {k: ({"opaque": v.values} if isinstance(v, Opaque) else v) for k, v in kwargs.items()}

        @collab.in_call_filter
        def decode_call(self, kwargs):
            return {k: (Opaque(v["opaque"]) if isinstance(v, dict) and "opaque" in v else v)
                    for k, v in kwargs.items()}

        @collab.out_result_filter
        def encode_result(self, result):
            return {"opaque": result.values} if isinstance(result, Opaque) else result

        @collab.in_result_filter
        def decode_result(self, result):
            return Opaque(result["opaque"]) if isinstance(result, dict) and "opaque" in result else result


    class Refuse:
        @collab.result_filter
        def refuse(self, result):
            if collab.site_name == "site-2":
                raise PermissionError("site-2 keeps its update")
            return result


    class AddOne:
        @collab.call_filter
        def add(self, kwargs):
            return {**kwargs, "x": kwargs["x"] + 1}
""")

DRIVER = textwrap.dedent("""
    import json, sys

    import numpy as np

    from collab_core import CollabCallError, CollabRecipe, collab
    from collab_tcp import PocEnv
    from filters_lib import AddOne, Clip, Codec, Inspect, Opaque, Point, Refuse


    class Site:
        @collab.publish
        def train(self, weights):
            return weights + int(collab.site_name.split("-")[1])

        @collab.publish
        def echo(self, value):
            return value

        @collab.publish
        def describe(self, value):
            return {"type": type(value).__name__, "values": getattr(value, "values", None),
                    "lr": collab.get_app_prop("lr"), "data": collab.get_app_prop("data")}

        @collab.publish
        def ask(self, x):
            return collab.server.double(x)

        @collab.publish
        def vote(self):
            return 1.0


    class Server:
        @collab.publish
        def double(self, x):
            return 2 * x

        @collab.main
        def run(self):
            out = {"train": {s: {**v, "clipped": v["clipped"].tolist()}
                             for s, v in collab.clients.train(np.ones(2))}}
            echoed = collab.clients.echo(Opaque([1, 2]))
            out["echo"] = {s: [type(v).__name__, v.values] for s, v in echoed}
            out["describe"] = dict(collab.clients.describe(Opaque([3])))
            out["points"] = {s: [type(p).__name__, p.x, p.y] for s, p in collab.clients.echo(Point(1.5, 2.5))}
            out["ask"] = dict(collab.clients.ask(5))
            votes = collab.clients(min_responses=1).vote()
            out["votes"] = {"ok": votes.sites, "failures": {s: str(e) for s, e in votes.failures.items()}}
            out["server_cfg"] = collab.get_app_prop("rounds")
            out["env"] = collab.get_app_prop("env")
            out["a_point"] = Point(9.0, 8.0)  # the driver decodes it too (the job's decomposers)
            return out


    class Recipe(CollabRecipe):
        def process_env(self, env):
            self.set_server_prop("env", type(env).__name__)


    if __name__ == "__main__":
        recipe = Recipe(job_name="pocfilters", server=Server(), client=Site(), min_clients=2)
        recipe.add_client_output_filter(Clip(1.5), tasks=["train"])
        recipe.add_server_input_filter(Inspect(sys.argv[3]), tasks=["*.train", "echo"])
        codec = Codec()
        for add in (recipe.add_server_output_filter, recipe.add_server_input_filter,
                    recipe.add_client_input_filter, recipe.add_client_output_filter):
            add(codec, tasks=["echo", "describe"])
        recipe.add_client_output_filter(Refuse(), tasks=["vote"])
        recipe.add_client_output_filter(AddOne(), tasks=["double"])      # the site's own call
        recipe.add_server_input_filter(AddOne(), tasks=["server.double"])  # the call the server serves
        recipe.add_client_output_filter("exclude_vars", tasks=["describe"], options={"names": ["data"]})
        recipe.add_decomposers([Point])
        recipe.add_server_config({"rounds": 3})
        recipe.add_client_config({"lr": 0.1, "data": "/d"})
        recipe.add_client_config({"lr": 0.2}, clients=["site-2"])
        run = recipe.execute(PocEnv(num_clients=2, workspace=sys.argv[1]))
        assert run.status == "finished", run.error
        point = run.result.pop("a_point")
        assert type(point).__name__ == "Point" and (point.x, point.y) == (9.0, 8.0), point
        job = json.loads((run.workspace / "job" / "job.json").read_text())
        with open(sys.argv[2], "w") as f:
            json.dump({"result": run.result, "filters": job["filters"], "decomposers": job["decomposers"],
                       "driver_pid": __import__("os").getpid()}, f)
""")


def test_filters_run_in_site_processes_and_travel_in_the_job(tmp_path):
    (tmp_path / "filters_lib.py").write_text(FILTERS)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out, record = tmp_path / "out.json", tmp_path / "server_inputs.txt"
    proc = subprocess.run([sys.executable, str(driver), str(tmp_path / "ws"), str(out), str(record)],
                          capture_output=True, text=True, timeout=TIMEOUT * 6, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    result = data["result"]

    # the client output filter ran in each site's own process, on that site, before sending
    train = result["train"]
    assert {s: v["clipped"] for s, v in train.items()} == {"site-1": [1.5, 1.5], "site-2": [1.5, 1.5]}
    assert {s: v["by"] for s, v in train.items()} == {"site-1": "site-1", "site-2": "site-2"}
    pids = {v["pid"] for v in train.values()}
    assert len(pids) == 2 and data["driver_pid"] not in pids
    assert {v["peer"] for v in train.values()} == {"server"} and {v["direction"] for v in train.values()} == {"out"}

    # Opaque is not wire-able: it crossed only as the codec's dicts, both ways, and was rebuilt
    assert result["echo"] == {"site-1": ["Opaque", [1, 2]], "site-2": ["Opaque", [1, 2]]}
    # exclude_vars, a registered filter named in job.json, took "data" out of each site's result
    assert result["describe"]["site-1"] == {"type": "Opaque", "values": [3], "lr": 0.1}
    assert result["describe"]["site-2"] == {"type": "Opaque", "values": [3], "lr": 0.2}  # clients=["site-2"]
    assert result["points"] == {"site-1": ["Point", 1.5, 2.5], "site-2": ["Point", 1.5, 2.5]}
    # x=5 -> 6 (site's output call filter) -> 7 (server's input call filter) -> 14
    assert result["ask"] == {"site-1": 14, "site-2": 14}
    assert result["votes"]["ok"] == ["site-1"]
    failure = result["votes"]["failures"]["site-2"]
    assert "Refuse.refuse" in failure and "site-2 keeps its update" in failure and "client output" in failure
    assert result["server_cfg"] == 3 and result["env"] == "PocEnv"

    # the server's input filter ran in the server process (not the driver), on decoded values, and
    # before the codec (added after it): it saw the codec's dict for an Opaque, and the Point
    lines = record.read_text().splitlines()
    assert sorted(line.split()[:3] for line in lines if line.startswith("train")) == [
        ["train", "site-1", "dict"], ["train", "site-2", "dict"]]
    assert sorted(line.split()[:3] for line in lines if line.startswith("echo")) == [
        ["echo", "site-1", "Point"], ["echo", "site-1", "dict"], ["echo", "site-2", "Point"],
        ["echo", "site-2", "dict"]]
    assert {line.split()[3] for line in lines} != {str(data["driver_pid"])}

    # job.json records them by import path and arguments, or by name; the codec is one instance
    entries = data["filters"]
    assert entries[0] == {"side": "client", "direction": "out", "tasks": ["train"], "instance": 0,
                          "object": {"module": "filters_lib", "class": "Clip", "args": {"bound": 1.5}}}
    codec_entries = [e for e in entries if e.get("object", {}).get("class") == "Codec"]
    assert len(codec_entries) == 4 and len({e["instance"] for e in codec_entries}) == 1
    assert {"side": "client", "direction": "out", "name": "exclude_vars", "options": {"names": ["data"]},
            "tasks": ["describe"]}.items() <= next(e for e in entries if "name" in e).items()
    assert data["decomposers"] == ["filters_lib.Point"]


# -- a job's filters are hostile input to the server and the sites -------------------------------

VETTED_CLIENT = {"module": "hospital_components", "class": "Trainer", "args": {"tag": "ok"}}


def test_a_locked_site_refuses_a_filter_outside_its_allowed_modules_and_runs_registered_ones(
        server, locked_site, tmp_path):  # noqa: F811
    marker = tmp_path / f"marker-{uuid.uuid4().hex[:6]}"
    job_dir = export_job(tmp_path, SERVER_ONLY, job_name="hostile-filter")
    config = json.loads((job_dir / "job.json").read_text())
    config["client"] = VETTED_CLIENT
    config["filters"] = [{"side": "client", "direction": "out", "instance": 0,
                          "object": {"module": "subprocess", "class": "Popen",
                                     "args": {"args": ["touch", str(marker)]}}}]
    (job_dir / "job.json").write_text(json.dumps(config))
    done = run_on_site_3(server, job_dir)
    assert done["status"] == "failed", done
    assert "allowed_modules" in done["error"] and "filters[0]" in done["error"], done["error"]
    assert not marker.exists()

    # a registered filter is installed code, not the job's: it runs on the locked site
    config["filters"] = [{"side": "client", "direction": "out", "instance": 0, "name": "include_vars",
                          "options": {"names": ["nothing"]}}]
    (job_dir / "job.json").write_text(json.dumps(config))
    done = run_on_site_3(server, job_dir)
    assert done["status"] == "finished", done
    assert [tuple(x) for x in done["result"]] == [("site-3", "site-3:ok")]

    # a decomposer the job cannot provide fails the job on the server, naming it; the server and
    # the site go on to run the next job
    config["decomposers"] = ["hospital_components.NoSuchSerializer"]
    (job_dir / "job.json").write_text(json.dumps(config))
    done = run_on_site_3(server, job_dir)
    assert done["status"] == "failed", done
    assert "hospital_components.NoSuchSerializer" in done["error"] and "cannot be found" in done["error"], done
    del config["decomposers"]
    (job_dir / "job.json").write_text(json.dumps(config))
    done = run_on_site_3(server, job_dir)
    assert done["status"] == "finished", done

    # a malformed entry is refused by the server before any site sees it
    files = with_config(pack_job(job_dir), filters=[{"side": "client", "direction": "out", "name": "x",
                                                     "run": "rm -rf /"}])
    with pytest.raises(AdminError, match="job refused") as err:
        submit_raw(server, files)
    assert "unknown key" in str(err.value) and "run" in str(err.value)
