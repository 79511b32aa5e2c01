"""A job is data, not a licence to run code (DESIGN.md section 7), proved against real server and
site processes: an admin submits hand-made jobs with hostile paths and names over a real admin
connection (refused by the server, nothing written outside its workspace, the next job runs), and
a site whose kit forbids custom code refuses job descriptors that name anything outside its
``allowed_modules`` before importing it (nothing runs), while a job made only of vetted
components runs there."""

from __future__ import annotations

import json
import shutil
import textwrap
import uuid
from pathlib import Path

import pytest

from collab_core import wire
from collab_core.job import pack_job
from collab_tcp.admin import AdminClient, AdminError

from .helpers import (
    SMALL_JOB,
    TIMEOUT,
    ServerProcess,
    export_job,
    start_site_process,
    tail,
    terminate,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def server(kits, tmp_path):
    srv = ServerProcess(kits, tmp_path / f"srv-{uuid.uuid4().hex[:6]}")
    try:
        yield srv
    finally:
        srv.stop()


def submit_raw(srv: ServerProcess, files: dict) -> dict:
    """A submit message as AdminClient.submit sends it, with ``files`` as given (no pack_job)."""
    with AdminClient(srv.kits.admin, address=srv.address, timeout=TIMEOUT) as admin:
        return admin._request({"t": "submit", "files": files, "sites": ["site-2"], "wait_timeout": 5,
                               "deploy_timeout": 5, "follow": True}, "submitted")


def good_files(tmp_path: Path) -> dict:
    return pack_job(export_job(tmp_path, SMALL_JOB, job_name=f"good-{uuid.uuid4().hex[:6]}"))


def with_config(files: dict, **changes) -> dict:
    config = json.loads(bytes(files["job.json"]))
    config.update(changes)
    return dict(files, **{"job.json": wire.Blob(json.dumps(config).encode())})


BAD_PATHS = {
    "dotdot": ("../../{tag}", ".."),
    "absolute": ("/tmp/{tag}", "/tmp/"),
    "inner-dotdot": ("a/../../{tag}", ".."),
    "backslash": ("a\\{tag}", "\\"),
    "empty": ("", "''"),
    "nul": ("x\x00{tag}", "\\x00"),
}


@pytest.mark.parametrize("case", sorted(BAD_PATHS))
def test_a_job_file_path_that_leaves_the_job_is_refused_and_nothing_is_written(server, tmp_path, case):
    tag = f"escaped-{uuid.uuid4().hex[:8]}"
    path, named = BAD_PATHS[case]
    path = path.format(tag=tag)
    files = dict(good_files(tmp_path), **{path: wire.Blob(b"pwned")})
    with pytest.raises(AdminError, match="job refused") as err:
        submit_raw(server, files)
    assert named in str(err.value), str(err.value)
    # nowhere the path could have landed: above the workspace, in /tmp, in the server's jobs
    assert not (Path("/tmp") / tag).exists()
    assert not any(tmp_path.parent.glob(f"**/*{tag}*")), "a job file was written somewhere"
    server.still_serves(tmp_path)


@pytest.mark.parametrize("change", ["job_name", "code"])
def test_a_job_name_or_code_entry_that_leaves_the_workspace_is_refused(server, tmp_path, change):
    tag = f"escaped-{uuid.uuid4().hex[:8]}"
    files = good_files(tmp_path)
    if change == "job_name":
        bad = with_config(files, job_name=f"../../tmp/{tag}")
        named = "job_name"
    else:
        config = json.loads(bytes(files["job.json"]))
        bad = with_config(files, code=[*config["code"], f"../{tag}.py"])
        named = f"../{tag}.py"
    with pytest.raises(AdminError, match="job refused") as err:
        submit_raw(server, bad)
    assert named in str(err.value), str(err.value)
    assert not (Path("/tmp") / tag).exists()
    assert not any(tmp_path.parent.glob(f"**/*{tag}*")), "a job file was written somewhere"
    server.still_serves(tmp_path)


# -- a site that forbids custom code --------------------------------------------------------------

VETTED = '''
from pathlib import Path

from collab_core import collab


class Trainer:
    def __init__(self, tag="t"):
        self.tag = tag

    @collab.init
    def setup(self):
        pass

    @collab.publish
    def hello(self):
        return f"{collab.site_name}:{self.tag}"
'''

SERVER_ONLY = """
from collab_core import collab

class Server:
    @collab.main
    def run(self):
        return sorted(collab.clients.hello())

class Client:
    @collab.publish
    def hello(self):
        return "custom code ran"
"""


@pytest.fixture
def locked_site(kits, server, tmp_path):
    """site-3 from a copy of its kit edited to allow_custom_code=false, allowed_modules=
    [hospital_components], with that module on its PYTHONPATH."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "hospital_components.py").write_text(textwrap.dedent(VETTED))
    kit = tmp_path / "site-3-kit"
    shutil.copytree(kits.sites["site-3"].path, kit)
    doc = json.loads((kit / "kit.json").read_text())
    doc.update(allow_custom_code=False, allowed_modules=["hospital_components"])
    (kit / "kit.json").write_text(json.dumps(doc, indent=2))
    log = server.root / "processes" / "site-3.log"
    proc = start_site_process(kit, server.port_file, server.root / "sites" / "site-3", log,
                              heartbeat=0.5, dead_after=10.0, env={"PYTHONPATH": str(lib)})
    try:
        with AdminClient(kits.admin, address=server.address, timeout=TIMEOUT) as admin:
            def up():
                assert proc.poll() is None, tail(log)
                return "site-3" in admin.status()["sites"]

            wait_for(up, what="the locked site-3 to connect")
        yield log
    finally:
        terminate([proc], 10)


def run_on_site_3(server: ServerProcess, job_dir: Path) -> dict:
    with AdminClient(server.kits.admin, address=server.address, timeout=TIMEOUT) as admin:
        job = admin.submit(job_dir, sites=["site-3"], wait_timeout=20)
        return admin.follow(job, timeout=60)


HOSTILE = {
    "os.system": lambda marker: {"module": "os", "class": "system", "args": {"command": f"touch {marker}"}},
    "subprocess.Popen": lambda marker: {"module": "subprocess", "class": "Popen",
                                        "args": {"args": ["touch", str(marker)]}},
    "builtins.eval": lambda marker: {"module": "builtins", "class": "eval",
                                     "args": {"source": f"open({str(marker)!r}, 'w')"}},
    "the job's own class": None,
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_site_without_custom_code_refuses_descriptors_outside_allowed_modules(server, locked_site,
                                                                              tmp_path, case):
    marker = tmp_path / f"marker-{uuid.uuid4().hex[:6]}"
    job_dir = export_job(tmp_path, SERVER_ONLY, job_name="hostile")
    if HOSTILE[case] is not None:
        config = json.loads((job_dir / "job.json").read_text())
        config["client"] = HOSTILE[case](marker)
        (job_dir / "job.json").write_text(json.dumps(config))
    done = run_on_site_3(server, job_dir)
    assert done["status"] == "failed", done
    assert "allowed_modules" in done["error"], done["error"]
    assert "custom code ran" not in json.dumps(done, default=str)
    assert not marker.exists()
    # the site is still there and runs a job made of vetted components
    _vetted_job_runs(server, tmp_path)


def _vetted_job_runs(server: ServerProcess, tmp_path: Path) -> None:
    job_dir = export_job(tmp_path, SERVER_ONLY, job_name="vetted")
    config = json.loads((job_dir / "job.json").read_text())
    config["client"] = {"module": "hospital_components", "class": "Trainer", "args": {"tag": "ok"}}
    (job_dir / "job.json").write_text(json.dumps(config))
    done = run_on_site_3(server, job_dir)
    assert done["status"] == "finished", (done, tail(server.log))
    assert [tuple(x) for x in done["result"]] == [("site-3", "site-3:ok")]


def test_a_job_of_vetted_components_runs_on_a_site_without_custom_code(server, locked_site, tmp_path):
    _vetted_job_runs(server, tmp_path)

