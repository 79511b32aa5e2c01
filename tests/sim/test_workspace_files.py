"""The workspace object (collab.workspace) and the files that travel with a job, in SimEnv, in an
exported job folder and through `collab run`; hostile job folders are refused naming the problem."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from collab_core import CollabRecipe, ExportError, RecipeError, collab, wire
from collab_core.job import load_job, read_job_config, run_job_folder
from collab_core.site_workspace import SiteWorkspace
from collab_sim import SimEnv

COLLAB = [sys.executable, "-m", "collab_core.cli"]


@pytest.fixture(autouse=True)
def _restore_imports():
    """load_job puts a job's code folder on sys.path and imports its modules: undo that."""
    path, modules = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        if name in ("app", "hostile_app"):
            del sys.modules[name]


def _tree(folder: Path) -> dict[str, str]:
    """{relative path: text} of every file under ``folder`` (bytes that are not text: their hash)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            try:
                out[p.relative_to(folder).as_posix()] = data.decode()
            except UnicodeDecodeError:
                out[p.relative_to(folder).as_posix()] = hashlib.sha256(data).hexdigest()
    return out


class FilesClient:
    @collab.init
    def setup(self):
        # staged before @collab.init runs
        self.seen_at_init = (collab.workspace / "vocab.txt").read_text()

    @collab.publish
    def probe(self):
        ws = collab.workspace
        data = Path(ws.get_resource_dir("data"))
        with open(ws / "vocab.txt") as f:
            vocab = f.read()
        return {
            "init": self.seen_at_init,
            "vocab": vocab,
            "configs": _tree(ws / "configs"),
            "data": _tree(data),
            "data_dir": str(data),
            "server_file_here": (ws / "server.cfg").exists(),
            "work": ws.get_work_dir(),
            "run": ws.get_run_dir(),
            "fspath": os.fspath(ws),
            "resource_dirs": ws.resource_dirs,
        }

    @collab.publish
    def scribble(self):
        # each site has its own copy: writing here changes neither the source nor another site's
        (collab.workspace / "vocab.txt").write_text(f"changed by {collab.site_name}")
        (Path(collab.workspace.get_resource_dir("data")) / "a.txt").write_text("changed")
        return True


class FilesServer:
    @collab.main
    def run(self):
        ws = collab.workspace
        first = dict(collab.clients.probe())
        collab.clients["site-1"].scribble()
        after = dict(collab.clients.probe())
        return {"server_cfg": (ws / "server.cfg").read_text(), "client_file_here": (ws / "vocab.txt").exists(),
                "data_here": (ws / "data").exists(), "model": Path(ws.get_resource_dir("model")).is_dir(),
                "work": ws.get_work_dir(), "first": first, "after": after}


@pytest.fixture
def project(tmp_path):
    src = tmp_path / "project"
    (src / "configs" / "deep").mkdir(parents=True)
    (src / "data" / "sub").mkdir(parents=True)
    (src / "vocab.txt").write_text("hello vocab")
    (src / "configs" / "a.yaml").write_text("a: 1")
    (src / "configs" / "deep" / "b.yaml").write_text("b: 2")
    (src / "data" / "a.txt").write_text("data a")
    (src / "data" / "sub" / "b.txt").write_text("data b")
    (src / "server.cfg").write_text("rounds=3")
    (src / "model").mkdir()
    (src / "model" / "init.bin").write_bytes(b"\x00\x01")
    return src


def _recipe(src: Path) -> CollabRecipe:
    recipe = CollabRecipe(job_name="files", server=FilesServer(), client=FilesClient(), min_clients=2)
    recipe.add_client_file(src / "vocab.txt").add_client_file(str(src / "configs"))
    recipe.set_client_resource_dirs({"data": src / "data"})
    recipe.add_server_file(src / "server.cfg")
    recipe.set_server_resource_dirs({"model": str(src / "model")})
    return recipe


def test_simenv_puts_client_files_and_resource_dirs_on_every_client_and_server_files_on_the_server(project, tmp_path):
    run = _recipe(project).execute(SimEnv(num_clients=2, workspace=tmp_path / "ws", progress="off"))
    assert run.status == "finished", run.error
    res = run.result
    ws = tmp_path / "ws"
    assert res["server_cfg"] == "rounds=3"
    assert res["client_file_here"] is False and res["data_here"] is False  # client things: not on the server
    assert res["model"] is True and (ws / "server" / "model" / "init.bin").read_bytes() == b"\x00\x01"
    assert res["work"] == str(ws / "server")
    for site in ("site-1", "site-2"):
        got = res["first"][site]
        assert got["init"] == got["vocab"] == "hello vocab"
        assert got["configs"] == {"a.yaml": "a: 1", "deep/b.yaml": "b: 2"}
        assert got["data"] == {"a.txt": "data a", "sub/b.txt": "data b"}
        assert got["data_dir"] == str(ws / site / "data")
        assert got["resource_dirs"] == {"data": str(ws / site / "data")}
        assert got["server_file_here"] is False
        assert got["work"] == got["fspath"] == str(ws / site)
        assert got["run"] == str(ws)
    # site-1 changed its copies; site-2's and the sources did not change
    assert res["after"]["site-1"]["vocab"] == "changed by site-1"
    assert res["after"]["site-1"]["data"]["a.txt"] == "changed"
    assert res["after"]["site-2"]["vocab"] == "hello vocab"
    assert res["after"]["site-2"]["data"]["a.txt"] == "data a"
    assert (project / "vocab.txt").read_text() == "hello vocab"
    assert (project / "data" / "a.txt").read_text() == "data a"


class PathClient:
    @collab.publish
    def paths(self):
        ws = collab.workspace
        (ws / "out").mkdir()
        with open(ws / "out" / "x.txt", "w") as f:
            f.write("x")
        joined = os.path.join(ws, "out", "x.txt")
        rd = ws.get_resource_dir("scratch")
        absent = ws.get_resource_dir("absent", create=False)
        errors = []
        for bad in ("../up", "a/b", "", "/etc", "a\\b", "log.txt"):
            try:
                ws.get_resource_dir(bad)
            except RecipeError as exc:
                errors.append(str(exc))
        try:
            ws.add_resource_dir("nowhere", ws / "missing")
        except RecipeError as exc:
            errors.append(str(exc))
        ws.add_resource_dir("elsewhere", ws / "out")
        return {
            "isinstance": isinstance(ws, os.PathLike) and isinstance(ws, SiteWorkspace),
            "fspath": os.fspath(ws), "str": str(ws), "path": str(Path(ws)), "name": ws.name,
            "parent": str(ws.parent), "exists": ws.exists(), "is_dir": ws.is_dir(),
            "div_type": type(ws / "out").__name__, "rdiv": str("prefix" / Path(ws.name)),
            "read": Path(joined).read_text(), "glob": sorted(p.name for p in ws.glob("*")),
            "eq": ws == Path(os.fspath(ws)), "hash": hash(ws) == hash(Path(os.fspath(ws))),
            "scratch": rd, "scratch_is_dir": Path(rd).is_dir(), "absent": absent,
            "absent_exists": Path(absent).exists(), "errors": errors,
            "elsewhere": ws.get_resource_dir("elsewhere"), "experiment": ws.get_experiment_dir(),
            "same_object": collab.workspace is ws,
        }


class PathServer:
    @collab.main
    def run(self):
        return collab.clients["site-1"].paths()


def test_workspace_stays_a_path_and_has_nvflare_methods(tmp_path):
    recipe = CollabRecipe(job_name="paths", server=PathServer(), client=PathClient(), min_clients=1)
    run = recipe.execute(SimEnv(num_clients=1, workspace=tmp_path / "ws", progress="off"))
    assert run.status == "finished", run.error
    got = run.result
    site = tmp_path / "ws" / "site-1"
    assert got["isinstance"] is True and got["same_object"] is True
    assert got["fspath"] == got["str"] == got["path"] == str(site)
    assert got["name"] == "site-1" and got["parent"] == str(tmp_path / "ws")
    assert got["exists"] and got["is_dir"] and got["eq"] and got["hash"]
    assert got["div_type"] in ("PosixPath", "WindowsPath")  # derived paths are plain paths
    assert got["rdiv"] == os.path.join("prefix", "site-1")
    assert got["read"] == "x" and "out" in got["glob"]
    assert got["scratch"] == str(site / "scratch") and got["scratch_is_dir"]
    assert got["absent"] == str(site / "absent") and got["absent_exists"] is False
    assert got["elsewhere"] == str(site / "out")
    assert got["experiment"] == str(tmp_path / "ws")
    errors = got["errors"]
    assert len(errors) == 7, errors
    assert "'..'" in errors[0] and "without '/'" in errors[1] and "non-empty" in errors[2]
    assert "relative" in errors[3] and "relative" in errors[4] and "collab writes log.txt" in errors[5]
    assert "not an existing folder" in errors[6]


def test_workspace_object_outside_a_job():
    ws = SiteWorkspace("/tmp/run-x/site-3")
    assert os.fspath(ws) == "/tmp/run-x/site-3" and ws.get_run_dir() == "/tmp/run-x"
    assert ws / "a" == Path("/tmp/run-x/site-3/a")
    assert Path(ws) == Path("/tmp/run-x/site-3") and repr(ws) == "SiteWorkspace('/tmp/run-x/site-3')"
    assert SiteWorkspace("/r/s", run_dir="/elsewhere").get_run_dir() == "/elsewhere"
    assert sorted([SiteWorkspace("/b"), SiteWorkspace("/a")])[0] == Path("/a")
    with pytest.raises(AttributeError):
        ws.no_such_thing  # noqa: B018


def test_recipe_time_errors_name_the_problem(project, tmp_path, monkeypatch):
    recipe = CollabRecipe(job_name="bad", server=FilesServer(), client=FilesClient(), min_clients=1)
    with pytest.raises(RecipeError, match=r"add_client_file: '.*nope.txt' does not exist"):
        recipe.add_client_file(project / "nope.txt")
    with pytest.raises(RecipeError, match="takes a path"):
        recipe.add_server_file(42)
    recipe.add_client_file(project / "vocab.txt")
    other = tmp_path / "other"
    other.mkdir()
    (other / "vocab.txt").write_text("second")
    with pytest.raises(RecipeError, match="already has a file named 'vocab.txt'"):
        recipe.add_client_file(other / "vocab.txt")
    with pytest.raises(RecipeError, match="already has a file named 'vocab.txt'"):
        recipe.set_client_resource_dirs({"vocab.txt": project / "data"})
    with pytest.raises(RecipeError, match="which is not a folder"):
        recipe.set_client_resource_dirs({"data": project / "server.cfg"})
    with pytest.raises(RecipeError, match="does not exist"):
        recipe.set_server_resource_dirs({"data": project / "missing"})
    with pytest.raises(RecipeError, match="takes a dict"):
        recipe.set_server_resource_dirs([project / "data"])
    with pytest.raises(RecipeError, match="without '/'"):
        recipe.set_server_resource_dirs({"a/b": project / "data"})
    (other / "log.txt").write_text("x")
    with pytest.raises(RecipeError, match="collab writes log.txt"):
        recipe.add_server_file(other / "log.txt")
    # relative paths: the working directory first, then next to the module that builds the recipe
    monkeypatch.chdir(project)
    recipe.add_server_file("server.cfg")
    assert recipe._files_of().files["server"]["server.cfg"] == project / "server.cfg"
    here = Path(__file__).name
    monkeypatch.chdir(tmp_path)
    recipe.add_server_file(here)
    assert recipe._files_of().files["server"][here] == Path(__file__).resolve()
    # a file deleted after it was added: a clear error when the job starts, naming it
    gone = tmp_path / "gone.txt"
    gone.write_text("soon gone")
    late = CollabRecipe(job_name="late", server=FilesServer(), client=FilesClient(), min_clients=1)
    late.add_client_file(project / "vocab.txt").add_client_file(gone).set_client_resource_dirs({"data": project / "data"})
    gone.unlink()
    run = late.execute(SimEnv(num_clients=1, workspace=tmp_path / "late-ws", progress="off"))
    assert run.status == "failed"
    assert "gone.txt" in run.error and "no longer exists" in run.error


# -- exported job folders and `collab run` ---------------------------------------------------------

APP = """
    import hashlib
    from pathlib import Path
    from collab_core import collab

    def digest(path):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for piece in iter(lambda: f.read(1 << 20), b""):
                h.update(piece)
        return h.hexdigest()

    class Server:
        @collab.main
        def run(self):
            ws = collab.workspace
            return {"server_cfg": (ws / "server.cfg").read_text(), "vocab_here": (ws / "vocab.txt").exists(),
                    "clients": dict(collab.clients.probe())}

    class Client:
        @collab.publish
        def probe(self):
            ws = collab.workspace
            data = Path(ws.get_resource_dir("data"))
            return {"vocab": (ws / "vocab.txt").read_text(), "b": (data / "sub" / "b.txt").read_text(),
                    "empty": sorted(p.name for p in Path(ws.get_resource_dir("empty")).iterdir()),
                    "blob": digest(ws / "blob.bin"), "server_cfg_here": (ws / "server.cfg").exists(),
                    "work": ws.get_work_dir()}
"""

MAKE = """
    import sys
    from app import Client, Server
    from collab_core import CollabRecipe
    recipe = CollabRecipe(job_name="carry", server=Server(), client=Client(), min_clients=2)
    recipe.add_client_file("vocab.txt").add_client_file("blob.bin").add_server_file("server.cfg")
    recipe.set_client_resource_dirs({"data": "data", "empty": "empty"})
    recipe.export(sys.argv[1])
"""


def _write_project(root: Path) -> str:
    root.mkdir(parents=True)
    (root / "app.py").write_text(textwrap.dedent(APP))
    (root / "make_job.py").write_text(textwrap.dedent(MAKE))
    (root / "vocab.txt").write_text("carried vocab")
    (root / "server.cfg").write_text("server only")
    (root / "data" / "sub").mkdir(parents=True)
    (root / "data" / "sub" / "b.txt").write_text("carried b")
    (root / "empty").mkdir()
    blob = os.urandom(3 << 20)
    (root / "blob.bin").write_bytes(blob)
    return hashlib.sha256(blob).hexdigest()


def test_export_writes_the_files_and_collab_run_carries_them(tmp_path):
    project = tmp_path / "project"
    digest = _write_project(project)
    job = tmp_path / "job"
    env = dict(os.environ, COLLAB_WORKSPACE_ROOT=str(tmp_path / "wsroot"), PYTHONUNBUFFERED="1")
    made = subprocess.run([sys.executable, "make_job.py", str(job)], cwd=project, capture_output=True, text=True,
                          timeout=120, env=env)
    assert made.returncode == 0, made.stderr
    config = json.loads((job / "job.json").read_text())
    assert config["client_files"] == ["blob.bin", "vocab.txt"] and config["server_files"] == ["server.cfg"]
    assert config["client_resource_dirs"] == ["data", "empty"] and "server_resource_dirs" not in config
    assert (job / "files" / "client" / "vocab.txt").read_text() == "carried vocab"
    assert (job / "files" / "server" / "server.cfg").read_text() == "server only"
    assert (job / "resources" / "client" / "data" / "sub" / "b.txt").read_text() == "carried b"
    assert (job / "resources" / "client" / "empty").is_dir()
    # the job folder runs from another directory, with no project files around
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "result.collab"
    ran = subprocess.run([*COLLAB, "run", str(job), "--clients", "2", "--workspace", str(tmp_path / "runws"),
                          "--result", str(out)], cwd=elsewhere, capture_output=True, text=True, timeout=180,
                         env=env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    with open(out, "rb") as f:
        result = wire.read_frame(f)
    assert result["server_cfg"] == "server only" and result["vocab_here"] is False
    for site in ("site-1", "site-2"):
        got = result["clients"][site]
        assert got == {"vocab": "carried vocab", "b": "carried b", "empty": [], "blob": digest,
                       "server_cfg_here": False, "work": str(tmp_path / "runws" / site)}
    # collab run copies: the job folder is as it was
    assert (job / "files" / "client" / "vocab.txt").read_text() == "carried vocab"
    # the loaded recipe exports the same files again
    again = load_job(job).export(tmp_path / "job2")
    assert _tree(again / "files") == _tree(job / "files")
    assert _tree(again / "resources") == _tree(job / "resources")
    assert (again / "resources" / "client" / "empty").is_dir()


def test_export_refuses_to_write_over_its_own_files(project):
    recipe = _recipe(project)
    with pytest.raises(ExportError, match="is inside it"):
        recipe.export(project / "data" / "job")
    with pytest.raises(ExportError, match="is inside it"):
        recipe.export(project / "configs")


# -- hostile job folders ---------------------------------------------------------------------------


def _job_folder(tmp_path: Path, project: Path) -> Path:
    """A real exported job (its code: this test module's classes are not exportable, so a module)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "hostile_app.py").write_text(textwrap.dedent(APP))
    sys.path.insert(0, str(src))
    try:
        import hostile_app

        recipe = CollabRecipe(job_name="hostile", server=hostile_app.Server(), client=hostile_app.Client())
        recipe.add_client_file(project / "vocab.txt").set_client_resource_dirs({"data": project / "data"})
        return recipe.export(tmp_path / "job")
    finally:
        sys.path.remove(str(src))
        sys.modules.pop("hostile_app", None)


def _edit(job: Path, **changes) -> None:
    config = json.loads((job / "job.json").read_text())
    config.update(changes)
    (job / "job.json").write_text(json.dumps(config))


@pytest.mark.parametrize("key, names, message", [
    ("client_files", ["../../etc/passwd"], "without '..'"),
    ("client_files", ["/etc/passwd"], "relative"),
    ("client_resource_dirs", ["C:evil"], "without drive"),
    ("server_files", ["a\\b"], "relative, '/'-separated"),
    ("client_files", ["nul\0name"], "NUL"),
    ("client_files", ["sub/dir"], "without '/'"),
    ("client_files", ["log.txt"], "collab writes log.txt"),
    ("client_files", [""], "non-empty"),
    ("client_files", [7], "is not a string"),
    ("client_files", "vocab.txt", "must be a list of names"),
    ("client_resource_dirs", ["vocab.txt"], "listed twice for the client"),
    ("client_files", ["x"] * 2, "listed twice"),
    ("client_files", [f"f{i}" for i in range(1001)], "at most 1000"),
])
def test_bad_names_in_job_json_are_refused(tmp_path, project, key, names, message):
    job = _job_folder(tmp_path, project)
    _edit(job, **{key: names})
    with pytest.raises(RecipeError, match=message) as err:
        read_job_config(job)
    assert "job.json" in str(err.value)
    with pytest.raises(RecipeError, match=message):
        run_job_folder(job, num_clients=1, workspace=tmp_path / "ws")


def test_bad_job_folders_are_refused_naming_the_entry(tmp_path, project):
    job = _job_folder(tmp_path, project)
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")

    # a listed file that the folder does not hold
    _edit(job, client_files=["vocab.txt", "missing.bin"])
    with pytest.raises(RecipeError, match=r"client file 'missing.bin'.*has no files/client/missing.bin"):
        load_job(job)
    _edit(job, client_files=["vocab.txt"])

    # a file that is a symbolic link out of the job folder
    link = job / "files" / "client" / "vocab.txt"
    link.unlink()
    link.symlink_to(outside)
    with pytest.raises(RecipeError, match=r"files/client/vocab.txt is a symbolic link to .*secret.txt, outside"):
        run_job_folder(job, num_clients=1, workspace=tmp_path / "ws")
    link.unlink()
    link.write_text("vocab")

    # a link deep inside a resource dir that leads out
    deep = job / "resources" / "client" / "data" / "sub" / "leak"
    deep.symlink_to(outside)
    with pytest.raises(RecipeError, match=r"resources/client/data/sub/leak is a symbolic link to .*secret.txt"):
        load_job(job)
    deep.unlink()
    # the resource dir itself a link to a folder outside
    data = job / "resources" / "client" / "data"
    moved = tmp_path / "moved-data"
    data.rename(moved)
    data.symlink_to(moved, target_is_directory=True)
    with pytest.raises(RecipeError, match=r"resources/client/data is a symbolic link to .*moved-data, outside"):
        load_job(job)
    data.unlink()
    moved.rename(data)

    # a resource dir that is a file
    _edit(job, client_resource_dirs=["data", "flat"])
    (job / "resources" / "client" / "flat").write_text("not a folder")
    with pytest.raises(RecipeError, match=r"resource dir 'flat' \(resources/client/flat\) is a file, not a folder"):
        load_job(job)
    (job / "resources" / "client" / "flat").unlink()

    # a resource dir the folder does not hold arrives empty (folders travel as their files)
    recipe = load_job(job)
    assert ("client", "flat") in recipe._files_of().empty
    assert outside.read_text() == "secret"
