"""Processes follow their job (DESIGN.md section 7): a driver script that runs a PocEnv job is
killed (SIGKILL, SIGTERM, Ctrl-C) while the job's main is busy in a loop of calls; none of the
server and site processes it started (session leaders of their own, found by walking /proc from
the driver while they run) is alive shortly after. Whatever the outcome, every process found is
SIGKILLed by pid at the end of the test."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from .helpers import TIMEOUT, spawn, tail, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="walks /proc"),
]

DRIVER = """
import sys
import time
from pathlib import Path

from collab_core import CollabRecipe, collab
from collab_tcp import PocEnv


class Server:
    @collab.main
    def run(self):
        t0 = time.monotonic()
        while time.monotonic() - t0 < 300:
            collab.clients.work()
            time.sleep(0.1)
        return "the driver was not killed"


class Client:
    def __init__(self, marker):
        self.marker = marker

    @collab.publish
    def work(self):
        Path(self.marker, collab.site_name).write_text("working")
        return 1


if __name__ == "__main__":
    recipe = CollabRecipe(job_name="lifetime", server=Server(), client=Client(sys.argv[1]), min_clients=2)
    print(recipe.execute(PocEnv(num_clients=2, workspace=sys.argv[2], heartbeat=0.5, dead_after=10.0)))
"""


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        for kid in children_of(todo.pop()):
            if kid not in found:
                found.add(kid)
                todo.append(kid)
    return found


def running(pid: int) -> bool:
    """The pid exists and is not a zombie (an exited child its new parent has not reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return "?"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_killing_the_driver_leaves_none_of_its_processes_alive(tmp_path, sig):
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER))
    markers = tmp_path / "markers"
    markers.mkdir()
    log = tmp_path / "driver.log"
    driver = spawn([sys.executable, str(script), str(markers), str(tmp_path / "ws")], log, cwd=str(tmp_path))
    seen: set[int] = set()
    try:
        def job_running():
            assert driver.poll() is None, f"the driver exited with {driver.returncode}:\n{tail(log)}"
            seen.update(descendants(driver.pid))
            return (markers / "site-1").exists() and (markers / "site-2").exists()

        wait_for(job_running, 120, interval=0.1, what="the PocEnv job to run")
        seen.update(descendants(driver.pid))
        procs = {pid: cmdline(pid) for pid in seen}
        assert sum("server start" in c for c in procs.values()) == 1, procs
        assert sum("site start" in c for c in procs.values()) == 2, procs
        driver.send_signal(sig)  # SIGINT: what Ctrl-C sends the driver (its terminal's foreground)
        driver.wait(TIMEOUT)
        t0 = time.monotonic()

        def all_gone():
            return not [pid for pid in seen if running(pid)]

        wait_for(all_gone, 60, interval=0.1,
                 what=f"the driver's processes to exit after {sig.name} "
                      f"(alive: {[(p, procs.get(p)) for p in seen if running(p)]})")
        print(f"\n{sig.name} of the driver: {len(seen)} processes, 0 alive "
              f"{time.monotonic() - t0:.1f} s later")
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(10)
        for pid in seen:
            if running(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
