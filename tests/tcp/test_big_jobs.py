"""The server keeps no job files in memory after deploying them (job files live on disk and
stream to sites as out-of-band buffers), proved against a real server process and a real site:
three 100 MiB jobs in a row leave the server's RSS (/proc/<pid>/status VmRSS) within 50 MiB of
where it was after a small warm-up job, and a 300 MiB job (over the 256 MiB a header could ever
carry) deploys: the site sees the file with the right size and hash."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import threading
import uuid
from pathlib import Path

import pytest

from collab_tcp.admin import AdminClient

from .helpers import TIMEOUT, MiB, PeakRss, ServerProcess, export_job, status_kib, tail

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/status"),
]

DATA = """
import hashlib
from pathlib import Path
from collab_core import collab

class Server:
    @collab.main
    def run(self):
        return dict(collab.clients.check())

class Client:
    @collab.publish
    def check(self):
        data = Path(__file__).resolve().parent.parent / "data" / "blob.bin"
        h = hashlib.sha256()
        with open(data, "rb") as f:
            for piece in iter(lambda: f.read(1 << 20), b""):
                h.update(piece)
        return [data.stat().st_size, h.hexdigest()]
"""


def big_job(tmp_path: Path, size: int) -> tuple[Path, str]:
    """A job folder with a ``size``-byte data/blob.bin of random bytes; returns it and the hash."""
    job_dir = export_job(tmp_path, DATA, job_name=f"big-{uuid.uuid4().hex[:6]}")
    (job_dir / "data").mkdir()
    h = hashlib.sha256()
    with open(job_dir / "data" / "blob.bin", "wb") as f:
        for _ in range(size // MiB):
            piece = os.urandom(MiB)
            h.update(piece)
            f.write(piece)
    return job_dir, h.hexdigest()


def rss(pid: int) -> int:
    return status_kib(pid, "VmRSS") * 1024


class AnonPeak:
    """The most anonymous memory (RssAnon: not file pages of memory maps) a process had over a
    block, sampled every 20 ms on a thread."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(OSError, AssertionError):
                self.peak = max(self.peak, status_kib(self.pid, "RssAnon") * 1024)

    def __enter__(self) -> AnonPeak:
        self.before = status_kib(self.pid, "RssAnon") * 1024
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def server(kits, tmp_path):
    srv = ServerProcess(kits, tmp_path / "srv")
    try:
        yield srv
    finally:
        srv.stop()


def run_big(server: ServerProcess, tmp_path: Path, size: int) -> None:
    job_dir, digest = big_job(tmp_path, size)
    with AdminClient(server.kits.admin, address=server.address, timeout=TIMEOUT) as admin:
        job = admin.submit(job_dir, sites=["site-2"], wait_timeout=20)
        done = admin.follow(job, timeout=240)
    assert done["status"] == "finished", (done, tail(server.log))
    assert list(done["result"]["site-2"]) == [size, digest]
    for path in job_dir.rglob("*.bin"):
        path.unlink()  # disk space: the server and the site keep their copies


def test_three_100_mib_jobs_leave_the_server_rss_where_it_was_and_a_300_mib_job_deploys(server, tmp_path):
    server.still_serves(tmp_path)  # warm-up: a site connects, a small job runs
    start = rss(server.pid)
    after = []
    for _ in range(3):
        run_big(server, tmp_path, 100 * MiB)
        after.append(rss(server.pid))
    print(f"\nserver RSS: {start / MiB:.1f} MiB after a small job; after each 100 MiB job: "
          f"{', '.join(f'{a / MiB:.1f}' for a in after)} MiB")
    assert after[-1] - start < 50 * MiB, (start, after)
    with PeakRss(server.pid) as peak, AnonPeak(server.pid) as anon:
        run_big(server, tmp_path, 300 * MiB)
    print(f"server RSS after a 300 MiB job: {rss(server.pid) / MiB:.1f} MiB (peak growth while "
          f"deploying it: {peak.growth / MiB:.1f} MiB with the file pages of its maps, "
          f"{(anon.peak - anon.before) / MiB:.1f} MiB anonymous)")
    assert rss(server.pid) - start < 50 * MiB
