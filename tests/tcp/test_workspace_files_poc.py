"""Files and resource dirs that travel with a job, over real processes: PocEnv puts client files
and resource dirs into every site process's workspace and server files into the server's only
(a 100 MiB client file streams to each site with the right hash), an exported job folder carries
them through `collab run --env poc`, and a real server refuses submitted jobs whose file entries are
hostile, naming the problem."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from collab_core import wire
from collab_core.job import pack_job
from collab_tcp.admin import AdminClient, AdminError

from .helpers import TIMEOUT, MiB, ServerProcess, export_job, tail

pytestmark = pytest.mark.slow

APP = textwrap.dedent("""
    import hashlib, os
    from pathlib import Path
    from collab_core import collab

    def digest(path):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for piece in iter(lambda: f.read(1 << 20), b""):
                h.update(piece)
        return h.hexdigest()

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        return None

    class Site:
        @collab.init
        def setup(self):
            self.init_saw = (collab.workspace / "vocab.txt").read_text()

        @collab.publish
        def probe(self):
            ws = collab.workspace
            data = Path(ws.get_resource_dir("data"))
            blob = ws / "blob.bin"
            return {"pid": os.getpid(), "init": self.init_saw, "vocab": open(ws / "vocab.txt").read(),
                    "data": sorted(p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file()),
                    "b": (data / "sub" / "b.txt").read_text(),
                    "blob": [os.path.getsize(blob), digest(blob)] if blob.exists() else None,
                    "server_file_here": (ws / "server.cfg").exists(), "model_here": (ws / "model").exists(),
                    "work": ws.get_work_dir(), "fspath": os.fspath(ws), "run": ws.get_run_dir(),
                    "resource_dirs": ws.resource_dirs, "peak_rss": status("VmHWM")}

    class Server:
        @collab.main
        def run(self):
            ws = collab.workspace
            return {"pid": os.getpid(), "cfg": (ws / "server.cfg").read_text(),
                    "model": sorted(os.listdir(ws.get_resource_dir("model"))),
                    "vocab_here": (ws / "vocab.txt").exists(), "blob_here": (ws / "blob.bin").exists(),
                    "data_here": (ws / "data").exists(), "work": ws.get_work_dir(),
                    "sites": dict(collab.clients.probe())}
""")

DRIVER = textwrap.dedent("""
    import json, os, sys
    from app import Server, Site
    from collab_core import CollabRecipe

    if __name__ == "__main__":
        mode, target, out = sys.argv[1:4]
        recipe = CollabRecipe(job_name="pocfiles", server=Server(), client=Site(), min_clients=2)
        recipe.add_client_file("vocab.txt").add_server_file("server.cfg")
        if os.path.exists("blob.bin"):
            recipe.add_client_file("blob.bin")
        recipe.set_client_resource_dirs({"data": "data"}).set_server_resource_dirs({"model": "model"})
        if mode == "export":
            recipe.export(target)
        else:
            from collab_tcp import PocEnv
            run = recipe.execute(PocEnv(num_clients=2, workspace=target, progress="off"))
            with open(out, "w") as f:
                json.dump({"status": run.status, "error": run.error, "result": run.result,
                           "driver_pid": os.getpid()}, f)
""")


def _project(root: Path, blob_size: int) -> str | None:
    """The project folder: app, driver, and the files the job sends; returns the blob's hash."""
    root.mkdir(parents=True)
    (root / "app.py").write_text(APP)
    (root / "driver.py").write_text(DRIVER)
    (root / "vocab.txt").write_text("poc vocab")
    (root / "server.cfg").write_text("for the server")
    (root / "data" / "sub").mkdir(parents=True)
    (root / "data" / "a.txt").write_text("a")
    (root / "data" / "sub" / "b.txt").write_text("poc b")
    (root / "model").mkdir()
    (root / "model" / "init.npy").write_bytes(b"\x93NUMPY")
    if not blob_size:
        return None
    h = hashlib.sha256()
    with open(root / "blob.bin", "wb") as f:
        for _ in range(blob_size // MiB):
            piece = os.urandom(MiB)
            h.update(piece)
            f.write(piece)
    return h.hexdigest()


def _check_sites(result: dict, site_root, digest: str | None, size: int) -> None:
    server = result
    assert server["cfg"] == "for the server" and server["model"] == ["init.npy"]
    assert not server["vocab_here"] and not server["blob_here"] and not server["data_here"]
    pids = {server["pid"]}
    for site in ("site-1", "site-2"):
        got = server["sites"][site]
        pids.add(got["pid"])
        assert got["init"] == got["vocab"] == "poc vocab"
        assert got["data"] == ["a.txt", "sub/b.txt"] and got["b"] == "poc b"
        assert got["blob"] == ([size, digest] if digest else None)
        assert not got["server_file_here"] and not got["model_here"]
        work = Path(got["work"])
        assert got["fspath"] == got["work"] and got["run"] == str(work.parent) and work.name == site
        assert work.is_relative_to(site_root(site)), (work, site_root(site))
        assert got["resource_dirs"] == {"data": str(work / "data")}
    assert len(pids) == 3, "the server and each site are their own processes"


def test_poc_sites_get_client_files_and_resource_dirs_and_the_server_its_own(tmp_path):
    project = tmp_path / "project"
    size = 100 * MiB
    digest = _project(project, size)
    ws = tmp_path / "ws"
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, "driver.py", "poc", str(ws), str(out)], cwd=project,
                          capture_output=True, text=True, timeout=TIMEOUT * 10)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert data["status"] == "finished", data["error"]
    result = data["result"]
    assert data["driver_pid"] not in {result["pid"], *(s["pid"] for s in result["sites"].values())}
    _check_sites(result, lambda site: ws / "sites" / site, digest, size)
    assert Path(result["work"]).is_relative_to(ws / "server")
    (blob_site_1,) = (ws / "sites" / "site-1").glob("jobs/*/workspace/site-1/blob.bin")
    assert blob_site_1.stat().st_size == size
    # on the sites: the server's files never arrived, the client files moved out of the job folder
    for site in ("site-1", "site-2"):
        (job_folder,) = (ws / "sites" / site).glob("jobs/*/job")
        assert (job_folder / "job.json").is_file()
        assert not (job_folder / "files" / "server").exists() and not (job_folder / "resources" / "server").exists()
        assert not (job_folder / "files" / "client" / "blob.bin").exists()
    # the server keeps the job folder as submitted (its own files are hard links into its workspace)
    (server_job,) = (ws / "server").glob("jobs/*/job")
    assert (server_job / "files" / "server" / "server.cfg").read_text() == "for the server"
    assert (server_job / "files" / "client" / "blob.bin").stat().st_size == size
    peaks = {site: result["sites"][site]["peak_rss"] for site in ("site-1", "site-2")}
    print(f"\nsite processes' peak RSS after receiving a {size // MiB} MiB client file: "
          f"{', '.join(f'{s} {p / MiB:.0f} MiB' for s, p in peaks.items())}")
    for site, peak in peaks.items():
        # the file arrives in memory once (received into place, written out, moved): never twice
        assert peak < 2 * size, f"{site} peaked at {peak / MiB:.0f} MiB receiving a {size // MiB} MiB file"


def test_an_exported_job_carries_its_files_through_collab_run_env_poc(tmp_path):
    project = tmp_path / "project"
    digest = _project(project, 2 * MiB)
    job = tmp_path / "job"
    made = subprocess.run([sys.executable, "driver.py", "export", str(job), "-"], cwd=project,
                          capture_output=True, text=True, timeout=TIMEOUT * 2)
    assert made.returncode == 0, made.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result_file = tmp_path / "result.collab"
    ws = tmp_path / "runws"
    ran = subprocess.run([sys.executable, "-m", "collab_core.cli", "run", str(job), "--env", "poc", "--clients", "2",
                          "--workspace", str(ws), "--result", str(result_file), "--quiet"],
                         cwd=elsewhere, capture_output=True, text=True, timeout=TIMEOUT * 6,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    with open(result_file, "rb") as f:
        result = wire.read_frame(f)
    _check_sites(result, lambda site: ws / "sites" / site, digest, 2 * MiB)


# -- hostile submissions to a real server ------------------------------------------------------------

FILES_JOB = """
from collab_core import collab

class Server:
    @collab.main
    def run(self):
        return sorted(collab.clients.hello())

class Client:
    @collab.publish
    def hello(self):
        return (collab.workspace / "note.txt").read_text()
"""


@pytest.fixture
def server(kits, tmp_path):
    srv = ServerProcess(kits, tmp_path / f"srv-{uuid.uuid4().hex[:6]}")
    try:
        yield srv
    finally:
        srv.stop()


def _files_job(tmp_path: Path) -> dict:
    job = export_job(tmp_path, FILES_JOB, job_name=f"files-{uuid.uuid4().hex[:6]}")
    (job / "files" / "client").mkdir(parents=True)
    (job / "files" / "client" / "note.txt").write_text("a note")
    config = json.loads((job / "job.json").read_text())
    config["client_files"] = ["note.txt"]
    (job / "job.json").write_text(json.dumps(config))
    return pack_job(job)


def _submit(srv: ServerProcess, files: dict) -> str:
    with AdminClient(srv.kits.admin, address=srv.address, timeout=TIMEOUT) as admin:
        return admin._request({"t": "submit", "files": files, "sites": ["site-2"], "wait_timeout": 5,
                               "deploy_timeout": 5, "follow": False}, "submitted")["job"]


def _with(files: dict, extra: dict | None = None, **config_changes) -> dict:
    config = json.loads(bytes(files["job.json"]))
    config.update(config_changes)
    return {**files, **(extra or {}), "job.json": wire.Blob(json.dumps(config).encode())}


HOSTILE = {
    "dotdot name": (dict(client_files=["../../escaped"]), None, "without '..'"),
    "absolute name": (dict(server_files=["/etc/passwd"]), None, "relative"),
    "backslash name": (dict(client_resource_dirs=["a\\b"]), None, "'/'-separated"),
    "nul name": (dict(client_files=["note.txt\0x"]), None, "NUL"),
    "nested name": (dict(client_files=["deep/note.txt"]), {"files/client/deep/note.txt": b"x"}, "without '/'"),
    "reserved name": (dict(client_files=["log.txt"]), {"files/client/log.txt": b"x"}, "collab writes log.txt"),
    "not a list": (dict(client_files={"note.txt": 1}), None, "must be a list of names"),
    "listed, missing": (dict(client_files=["note.txt", "ghost.bin"]), None, "has no files/client/ghost.bin"),
    "resource dir is a file": (dict(client_resource_dirs=["data"]), {"resources/client/data": b"flat"},
                               "is a file, not a folder"),
}


def test_a_server_refuses_jobs_with_hostile_file_entries_naming_them(server, tmp_path):
    good = _files_job(tmp_path)
    for case, (changes, extra, message) in HOSTILE.items():
        files = _with(good, {k: wire.Blob(v) for k, v in (extra or {}).items()}, **changes)
        with pytest.raises(AdminError, match="job refused") as err:
            _submit(server, files)
        assert message in str(err.value), (case, str(err.value))
    jobs = server.root / "server" / "jobs"
    assert not list(jobs.glob("*/job")), "a refused job left its folder on the server"
    # the good job runs after all that, and its client file reaches the site
    with AdminClient(server.kits.admin, address=server.address, timeout=TIMEOUT) as admin:
        server.still_serves(tmp_path)
        job = _submit(server, good)
        done = admin.follow(job, subscribe=True, timeout=60)
    assert done["status"] == "finished", (done, tail(server.log))
    assert [tuple(pair) for pair in done["result"]] == [("site-2", "a note")]


# -- a hostile deploy to a real site agent ---------------------------------------------------------


class _Wire:
    """Stands in for the site's connection to the server: keeps what the site sends."""

    def __init__(self):
        self.sent: list[dict] = []

    def send(self, msg: dict) -> None:
        self.sent.append(msg)


def _deploy(agent, files: dict, server_interface: dict, job_id: str) -> dict:
    conn = _Wire()
    agent._deploy(conn, {"t": "deploy", "job": job_id, "name": "files", "participants": [agent.name],
                         "server_interface": server_interface, "files": files, "tracking": [],
                         "backend_type": "poc"})
    (ready,) = [m for m in conn.sent if m["t"] == "ready"]
    return ready


def test_a_site_never_takes_the_server_files_and_refuses_bad_entries_from_the_server(kits, tmp_path):
    from collab_core.app import App
    from collab_tcp.site import SiteAgent

    from .helpers import job_module

    with job_module(tmp_path, FILES_JOB) as mod:
        server_interface = App(mod.Server(), role="server").interface.to_wire()
    good = _files_job(tmp_path)
    agent = SiteAgent(kits.sites["site-1"], tmp_path / "site-ws")
    try:
        # a deploy that carries the server's own files (which a server never sends) and lists them
        secret = {"files/server/secret.cfg": wire.Blob(b"server secret"),
                  "resources/server/model/w.bin": wire.Blob(b"weights")}
        ready = _deploy(agent, _with(good, secret, server_files=["secret.cfg"], server_resource_dirs=["model"]),
                        server_interface, "files-00000001")
        assert ready["ok"], ready.get("error")
        folder = tmp_path / "site-ws" / "jobs" / "files-00000001"
        assert not any(folder.rglob("secret.cfg")) and not any(folder.rglob("w.bin"))
        assert (folder / "workspace" / "site-1" / "note.txt").read_text() == "a note"
        assert not (folder / "job" / "files" / "client" / "note.txt").exists()  # moved, not copied
        assert agent.job.site.workspace.get_resource_dir("model", create=False) == str(
            folder / "workspace" / "site-1" / "model")  # not the server's: nothing registered or made
        assert not (folder / "workspace" / "site-1" / "model").exists()
        # bad entries in the job.json a server forwards are refused by the site itself, named
        for n, (changes, extra, message) in enumerate(HOSTILE.values()):
            files = _with(good, {k: wire.Blob(v) for k, v in (extra or {}).items()}, **changes)
            ready = _deploy(agent, files, server_interface, f"files-1000000{n}")
            assert not ready["ok"] and message in ready["error"], (changes, ready.get("error"))
        assert not any((tmp_path / "site-ws").rglob("escaped")), "a hostile entry was written"
    finally:
        if agent.job is not None:
            agent._unload(agent.job)
        agent.executor.shutdown(wait=False)
