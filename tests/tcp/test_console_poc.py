"""The console of a PocEnv run (progress lines and sites' prints from other processes), the same
bits as SimEnv for a seeded FedAvg, and site processes that log under their own name."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np

from .helpers import TIMEOUT

DRIVER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from collab_core import CollabRecipe, collab, report_round
    from collab_sim import SimEnv
    from collab_tcp import PocEnv

    class Site:
        @collab.publish
        def train(self, w, r):
            i = int(collab.site_name.split("-")[1])
            time.sleep(((i * 7 + r * 3) % 4) * 0.01)  # arrival order changes from round to round
            for k in range(3):
                print(f"{collab.site_name} round {r} line {k} " + "y" * 40)
            rng = np.random.default_rng(i)
            return w + rng.normal(size=w.shape).astype(np.float32) * (10.0 ** i), 10 + i

    class Server:
        def __init__(self, rounds=3):
            self.rounds = rounds

        @collab.main
        def run(self):
            w = np.zeros(500, dtype=np.float32)
            for r in range(self.rounds):
                results = collab.clients.train(w, r)
                total = sum(n for _, (_, n) in results)
                w = sum(wi * np.float32(n / total) for _, (wi, n) in results)
                print(f"main finished round {r + 1}")
                report_round(r + 1, self.rounds, {"norm": float(np.linalg.norm(w))})
            return w

    if __name__ == "__main__":
        recipe = CollabRecipe(job_name="poccon", server=Server(), client=Site())
        env = PocEnv(num_clients=3, workspace=sys.argv[2]) if sys.argv[1] == "poc" else SimEnv(num_clients=3)
        run = recipe.execute(env)
        assert run.status == "finished", run.error
        np.save(sys.argv[3], run.result)
""")


def test_poc_console_and_bits_match_simenv(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    outs = {}
    for env in ("poc", "sim"):
        proc = subprocess.run([sys.executable, str(driver), env, str(tmp_path / "ws"), str(tmp_path / f"{env}.npy")],
                              capture_output=True, text=True, timeout=TIMEOUT * 6, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        outs[env] = proc
    poc = outs["poc"]
    progress = [ln.removeprefix("collab | ") for ln in poc.stderr.splitlines() if ln.startswith("collab | ")]
    assert progress[0] == f"job poccon: PocEnv with 3 client(s); workspace {tmp_path / 'ws'}"
    assert [ln.split(":")[0] for ln in progress if ln.startswith("round")] == ["round 1/3", "round 2/3", "round 3/3"]
    assert any(ln.startswith("train(): 3 ok in ") for ln in progress)
    assert progress[-1].startswith("job poccon finished in ")
    # every site's prints, whole, with the site's name; main's own prints as they are
    stdout = poc.stdout.splitlines()
    for site in ("site-1", "site-2", "site-3"):
        for r in range(3):
            for k in range(3):
                assert f"[{site}] {site} round {r} line {k} " + "y" * 40 in stdout
    assert [ln for ln in stdout if ln.startswith("main finished")] == [f"main finished round {r}" for r in (1, 2, 3)]
    # the same floats as SimEnv, bit for bit
    assert np.load(tmp_path / "poc.npy").tobytes() == np.load(tmp_path / "sim.npy").tobytes()
    # a site process logs under its own name, in a job and outside one
    site_out = (tmp_path / "ws" / "processes" / "site-2.log").read_text()
    assert "[-]" not in site_out and "|-]" not in site_out
    assert "[site-2] collab.tcp" in site_out
