"""The command line, as an operator uses it: `collab provision`, a server and two sites as separate
processes, `collab status`, `collab submit` (with a result file), ProdEnv against the same server,
and SIGTERM stopping everything within a bound."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

from collab_core import CollabRecipe, wire
from collab_tcp import ProdEnv

from .helpers import (
    LOCAL,
    TIMEOUT,
    collab_cmd,
    job_module,
    read_port_file,
    run_cli,
    set_kit_server,
    spawn,
    tail,
    terminate,
    wait_for,
)

ALGO = """
import logging
import numpy as np
from collab_core import collab

class Server:
    def __init__(self, rounds=2):
        self.rounds = rounds

    @collab.main
    def run(self):
        w = np.zeros(4, dtype=np.float32)
        for r in range(self.rounds):
            res = collab.clients.step(w, r)
            w = sum(v for _, v in res) / len(res)
        return {"w": w, "sites": sorted(res.sites), "rounds": self.rounds}

class Client:
    @collab.publish
    def step(self, w, r):
        k = int(collab.site_name.split("-")[1])
        logging.getLogger("user").info("step %d on %s", r, collab.site_name)
        return w + np.float32(k)
"""

MAKE_JOB = """
import sys
from algo import Client, Server
from collab_core import CollabRecipe
CollabRecipe(job_name="cli-job", server=Server(rounds=int(sys.argv[2])), client=Client(), min_clients=2).export(sys.argv[1])
"""


def test_provision_server_sites_status_submit_prodenv_and_sigterm(tmp_path):
    kits_dir = tmp_path / "kits"
    out = run_cli(["provision", "--project", "cli-demo", "--server", "127.0.0.1:1", "--sites", "site-1,site-2",
                   "--admin", "admin@example.org", "--out", str(kits_dir)])
    assert out.returncode == 0, out.stderr
    for name in ("server", "site-1", "site-2", "admin@example.org"):
        assert (kits_dir / name / "kit.json").is_file(), name
    admin_kit = kits_dir / "admin@example.org"

    port_file = tmp_path / "server.port"
    logs = tmp_path / "logs"
    procs: dict[str, subprocess.Popen] = {}
    try:
        procs["server"] = spawn(collab_cmd("server", "start", "--kit", str(kits_dir / "server"), "--port", "0",
                                           "--port-file", str(port_file), "--workspace", str(tmp_path / "server-ws")),
                                logs / "server.log")
        address = read_port_file(port_file, procs["server"], log_path=logs / "server.log")
        assert address[0] == LOCAL and address[1] > 0
        # the admin's kit names the server's address (the CLI's admin commands dial what the kit says)
        set_kit_server(admin_kit, address)
        for site in ("site-1", "site-2"):
            procs[site] = spawn(collab_cmd("site", "start", "--kit", str(kits_dir / site), "--port-file",
                                           str(port_file), "--workspace", str(tmp_path / f"{site}-ws")),
                                logs / f"{site}.log")

        def status():
            for name, p in procs.items():
                assert p.poll() is None, f"{name} exited with {p.returncode}:\n{tail(logs / f'{name}.log')}"
            got = run_cli(["status", "--kit", str(admin_kit), "--json"], timeout=30)
            assert got.returncode == 0, got.stderr
            return json.loads(got.stdout)

        wait_for(lambda: status()["sites"] == ["site-1", "site-2"], TIMEOUT, interval=0.2,
                 what="`collab status` to list both sites")
        st = status()
        assert st["project"] == "cli-demo" and st["current"] is None and st["jobs"] == []

        # a job folder exported by the user's own script, submitted with the CLI
        project = tmp_path / "project"
        project.mkdir()
        (project / "algo.py").write_text(textwrap.dedent(ALGO))
        (project / "make_job.py").write_text(textwrap.dedent(MAKE_JOB))
        made = subprocess.run([sys.executable, "make_job.py", str(tmp_path / "job"), "3"], cwd=project,
                              capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
        result_file = tmp_path / "result.bin"
        sub = run_cli(["submit", str(tmp_path / "job"), "--kit", str(admin_kit), "--json", "--result", str(result_file),
                       "--workspace", str(tmp_path / "submit-ws")], timeout=120)
        assert sub.returncode == 0, sub.stdout + sub.stderr
        summary = json.loads(sub.stdout)  # stdout is the JSON summary only; logs go to stderr
        assert summary["status"] == "finished" and summary["job_name"] == "cli-job" and summary["error"] is None
        assert "[site-1]" in sub.stderr and "step 2 on site-1" in sub.stderr
        with open(result_file, "rb") as f:
            result = wire.read_frame(f)
        # w_r+1 = mean(w_r + k) over k in {1, 2}: three rounds give 4.5 everywhere
        assert result["sites"] == ["site-1", "site-2"] and result["rounds"] == 3
        assert result["w"].dtype == np.float32 and np.array_equal(result["w"], np.full(4, 4.5, np.float32))
        after = status()
        assert [j["status"] for j in after["jobs"]] == ["finished"]

        # ProdEnv against the same server: deploy() and recipe.execute()
        with job_module(tmp_path, ALGO) as mod:
            recipe = CollabRecipe(job_name="prod-job", server=mod.Server(rounds=1), client=mod.Client(), min_clients=2)
            run = ProdEnv(kit=str(admin_kit), workspace=tmp_path / "prod-1", job_timeout=60).deploy(recipe)
            assert run.status == "finished", run.error
            assert np.array_equal(run.result["w"], np.full(4, 1.5, np.float32))
            assert "step 0 on site-2" in run.log("site-2")
            one = CollabRecipe(job_name="prod-one", server=mod.Server(rounds=1), client=mod.Client(), min_clients=1)
            run = one.execute(ProdEnv(kit=admin_kit, sites=["site-2"], workspace=tmp_path / "prod-2", job_timeout=60))
            assert run.status == "finished", run.error
            assert run.result["sites"] == ["site-2"] and np.array_equal(run.result["w"], np.full(4, 2.0, np.float32))
            assert run.env == "prod"
        assert [j["status"] for j in status()["jobs"]] == ["finished"] * 3
        # collab run --env prod --kit: the same job folder through the generic run command
        ran = run_cli(["run", str(tmp_path / "job"), "--env", "prod", "--kit", str(admin_kit), "--json"], timeout=120)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert json.loads(ran.stdout)["status"] == "finished"
        assert "collab | job cli-job: ProdEnv (job " in ran.stderr and "collab | job cli-job finished in" in ran.stderr
        assert [j["status"] for j in status()["jobs"]] == ["finished"] * 4
        assert all(p.poll() is None for p in procs.values())
    finally:
        codes = terminate(list(procs.values()), 10)
    assert all(code == 0 for code in codes.values()), {n: codes[p.pid] for n, p in procs.items()}
    # with the server gone the CLI says so, quickly, instead of hanging
    gone = run_cli(["status", "--kit", str(admin_kit)], timeout=30)
    assert gone.returncode != 0 and "cannot reach the server" in gone.stderr, gone.stderr
    assert not any(os.path.exists(f"/proc/{p.pid}") for p in procs.values())
