"""``collab.workspace`` -- a site's folder, as an object -- and the files that travel with a job.

A site's workspace is a folder of its own in the run's workspace (``<run>/<site>``). The object
code gets from ``collab.workspace`` is that folder -- an :class:`os.PathLike` that also joins,
tests and creates like a :class:`pathlib.Path` (``collab.workspace / "model.npy"``,
``open(collab.workspace / "x")``, ``os.fspath``, ``.mkdir()``, ``.exists()``...) -- with NVFlare's
workspace methods:

* ``get_work_dir()``: this site's folder (the same path as the object itself);
* ``get_run_dir()``: the run's folder that holds every site's folder of this job on this machine;
* ``get_resource_dir(name, create=True)``: the folder ``name`` of this site -- a resource dir the
  recipe sent with the job, one registered with ``add_resource_dir``, or else ``<work dir>/<name>``
  (created unless ``create=False``).

Files that travel with the job (``recipe.add_server_file(path)``, ``recipe.add_client_file(path)``,
``recipe.set_server_resource_dirs({name: folder})``, ``recipe.set_client_resource_dirs(...)``) land
in each receiving site's work dir under their own name before its ``@collab.init`` runs: a file or
folder ``data/vocab.txt`` at ``collab.workspace / "vocab.txt"``, a resource dir ``"data"`` at
``collab.workspace / "data"`` (= ``collab.workspace.get_resource_dir("data")``). Server files reach
the server only, client files every client. Each site gets its own copy: SimEnv copies them into
every simulated site's folder; PocEnv/ProdEnv carry them in the job folder::

    JOB/files/server/<name>        add_server_file           job.json "server_files": [name, ...]
    JOB/files/client/<name>        add_client_file           job.json "client_files": [...]
    JOB/resources/server/<name>/   set_server_resource_dirs  job.json "server_resource_dirs": [...]
    JOB/resources/client/<name>/   set_client_resource_dirs  job.json "client_resource_dirs": [...]

A job folder is hostile input: every name is one plain path component (no ``/``, ``\\``, ``..``,
NUL, drive, or a name collab writes itself such as ``log.txt``), every listed entry must be in the
folder (a resource dir may be absent: it arrives empty), and nothing in it may be a symbolic link
that leaves the folder. Folders travel as the files in them (an empty sub-folder does not).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import RecipeError
from .loading import check_job_path

ROLES = ("server", "client")
FILES_DIR = "files"
RESOURCES_DIR = "resources"
#: job.json keys (all optional): lists of names
CONFIG_KEYS = ("server_files", "client_files", "server_resource_dirs", "client_resource_dirs")
#: names collab itself writes in a site's work dir
RESERVED = frozenset({"log.txt"})
#: at most this many files and resource dirs per side
MAX_ENTRIES = 1000
#: what a job folder holds for the server only: the server does not send it to sites, and a site
#: drops it from any deploy
SERVER_ONLY = (f"{FILES_DIR}/server/", f"{RESOURCES_DIR}/server/")
MODES = ("copy", "move", "link")


def check_entry_name(name: object, what: str) -> str:
    """A name of a job's file or resource dir: one plain path component. Returns it; raises
    RecipeError naming the problem."""
    if not isinstance(name, str):
        raise RecipeError(f"{what} name {name!r} is not a string")
    check_job_path(name, what)
    if "/" in name:
        raise RecipeError(f"refusing {what} name {name!r}: it is one name inside the site's workspace, "
                          f"without '/' (use a resource dir for a folder tree)")
    if name in RESERVED:
        raise RecipeError(f"refusing {what} name {name!r}: collab writes {name} in every site's "
                          f"workspace; rename the file")
    return name


def entry_path(role: str, kind: str, name: str) -> str:
    """Where a job folder keeps a file (kind "files") or resource dir (kind "resources")."""
    return f"{FILES_DIR if kind == 'files' else RESOURCES_DIR}/{role}/{name}"


def is_server_only(rel: str) -> bool:
    return any(rel.startswith(p) for p in SERVER_ONLY)


def validate_files_config(config: Mapping[str, Any], file: str) -> None:
    """Check a job.json's file and resource-dir lists (names only; see :meth:`JobFiles.from_job_folder`
    for what the folder holds)."""
    for role in ROLES:
        seen: set[str] = set()
        for key in (f"{role}_files", f"{role}_resource_dirs"):
            names = config.get(key, [])
            if not isinstance(names, list):
                raise RecipeError(f"{file}: {key} must be a list of names, got {type(names).__name__}")
            if len(names) > MAX_ENTRIES:
                raise RecipeError(f"{file}: {key} lists {len(names)} entries; at most {MAX_ENTRIES}")
            for name in names:
                check_entry_name(name, f"{file}: {key}")
                if name in seen:
                    raise RecipeError(f"{file}: {name!r} is listed twice for the {role} ({key}); each file and "
                                      f"resource dir of a side needs its own name")
                seen.add(name)


class SiteWorkspace(os.PathLike):
    """A site's workspace folder: usable wherever a path is (``os.fspath``, ``/``, ``open``,
    ``Path(...)``, and the :class:`pathlib.Path` methods and attributes), plus NVFlare's
    ``get_work_dir()``, ``get_run_dir()`` and ``get_resource_dir(name)``.

    The ``get_*`` methods return strings, as NVFlare's do; ``/`` returns a :class:`pathlib.Path`.
    """

    def __init__(self, work_dir: str | os.PathLike[str], run_dir: str | os.PathLike[str] | None = None):
        self._path = Path(work_dir)
        self._run_dir = Path(run_dir) if run_dir is not None else self._path.parent
        self._resource_dirs: dict[str, Path] = {}

    # -- NVFlare's workspace methods --------------------------------------------------------------

    def get_work_dir(self) -> str:
        """This site's own folder (what the object itself is)."""
        return str(self._path)

    def get_run_dir(self, job_id: str | None = None) -> str:
        """The folder of this job's run on this machine: it holds every local site's folder (in
        SimEnv the server's and every client's; on a PocEnv/ProdEnv site that site's).
        ``job_id`` (NVFlare's argument; ``collab.fl_ctx.get_job_id()``) can only name this job."""
        if job_id is not None:
            run = Path(self._run_dir)
            if job_id not in (run.name, run.parent.name) and not run.name.startswith(f"{job_id}-"):
                raise RecipeError(f"get_run_dir({job_id!r}): a site only sees its own job's run "
                                  f"folder ({run}); call it without a job id, or with collab.fl_ctx.get_job_id()")
        return str(self._run_dir)

    def get_experiment_dir(self) -> str:
        """The Fox API's name for :meth:`get_run_dir`."""
        return self.get_run_dir()

    def get_resource_dir(self, name: str, create: bool = True) -> str:
        """The folder ``name`` of this site: a resource dir the recipe sent with the job
        (``recipe.set_client_resource_dirs({name: ...})``) or one registered with
        :meth:`add_resource_dir`; otherwise ``<work dir>/<name>``, created unless ``create=False``."""
        check_entry_name(name, "resource dir")
        registered = self._resource_dirs.get(name)
        if registered is not None:
            return str(registered)
        path = self._path / name
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return str(path)

    def add_resource_dir(self, name: str, resource_dir: str | os.PathLike[str]) -> None:
        """Make ``get_resource_dir(name)`` return ``resource_dir``, an existing folder on this
        machine (e.g. a site's own data folder, from ``collab.get_app_prop``). On this site only."""
        check_entry_name(name, "resource dir")
        path = Path(resource_dir)
        if not path.is_dir():
            raise RecipeError(f"resource dir {name!r}: {path} is not an existing folder on {self._path.name}")
        self._resource_dirs[name] = path

    @property
    def resource_dirs(self) -> dict[str, str]:
        """The named resource dirs of this site (name -> folder)."""
        return {name: str(path) for name, path in self._resource_dirs.items()}

    # -- a path -----------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The work dir as a :class:`pathlib.Path`."""
        return self._path

    def __fspath__(self) -> str:
        return os.fspath(self._path)

    def __str__(self) -> str:
        return str(self._path)

    def __repr__(self) -> str:
        return f"SiteWorkspace({str(self._path)!r})"

    def __truediv__(self, other: str | os.PathLike[str]) -> Path:
        return self._path / other

    def __rtruediv__(self, other: str | os.PathLike[str]) -> Path:
        return other / self._path if isinstance(other, Path) else Path(other) / self._path

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SiteWorkspace):
            return self._path == other._path
        if isinstance(other, os.PathLike):
            return self._path == Path(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._path)

    def __lt__(self, other: object) -> bool:
        return self._path < (other._path if isinstance(other, SiteWorkspace) else other)  # type: ignore[operator]

    def __getattr__(self, name: str) -> Any:
        # everything else a Path has (mkdir, exists, is_dir, glob, iterdir, name, parent, joinpath...)
        if name.startswith("__") or name in ("_path", "_run_dir", "_resource_dirs"):
            raise AttributeError(name)
        return getattr(self._path, name)

    def __dir__(self) -> Iterable[str]:
        return sorted(set(super().__dir__()) | set(dir(self._path)))


def as_workspace(value: Any) -> SiteWorkspace:
    """A site context's workspace: kept as it is when it is one, else wrapped."""
    return value if isinstance(value, SiteWorkspace) else SiteWorkspace(value)


class JobFiles:
    """The files and resource dirs of a job, per side: ``{name: source path}``.

    ``mode`` is how :meth:`stage` puts them into a site's work dir: ``"copy"`` (the sources stay as
    they are: SimEnv, ``collab run``), ``"move"`` (a site's own unpacked job folder: no second copy
    on disk) or ``"link"`` (hard links where the file system allows, else copies: the server keeps
    the job folder as it was submitted)."""

    def __init__(self, mode: str = "copy"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode = mode
        self.files: dict[str, dict[str, Path]] = {role: {} for role in ROLES}
        self.resource_dirs: dict[str, dict[str, Path]] = {role: {} for role in ROLES}
        #: (role, name) of resource dirs a job folder lists but does not hold: they arrive empty
        self.empty: set[tuple[str, str]] = set()

    def __bool__(self) -> bool:
        return any(self.files[r] or self.resource_dirs[r] for r in ROLES)

    def __repr__(self) -> str:
        parts = [f"{r}_{k}={sorted(d[r])}" for k, d in (("files", self.files), ("resource_dirs", self.resource_dirs))
                 for r in ROLES if d[r]]
        return f"JobFiles({', '.join(parts)})"

    def copy(self) -> JobFiles:
        other = JobFiles(self.mode)
        for role in ROLES:
            other.files[role] = dict(self.files[role])
            other.resource_dirs[role] = dict(self.resource_dirs[role])
        other.empty = set(self.empty)
        return other

    # -- the recipe side --------------------------------------------------------------------------

    def _taken(self, role: str, name: str, kind: str) -> None:
        where = ("file" if name in self.files[role] else "resource dir" if name in self.resource_dirs[role]
                 else None)
        if where is not None:
            raise RecipeError(
                f"the {role} already has a {where} named {name!r}; {kind}s land in the site's workspace under "
                f"their own name, so two of one side cannot share a name. Rename one of them"
            )

    def add_file(self, role: str, path: str | os.PathLike[str], near: Path | None = None) -> str:
        """Add a file or folder for ``role``; returns its name in the site's workspace."""
        if not isinstance(path, (str, os.PathLike)):
            raise RecipeError(f"add_{role}_file takes a path (str or os.PathLike), got {type(path).__name__}")
        src = _existing(path, near, f"add_{role}_file")
        name = check_entry_name(src.name, f"add_{role}_file")
        self._taken(role, name, "file")
        if len(self.files[role]) + len(self.resource_dirs[role]) >= MAX_ENTRIES:
            raise RecipeError(f"the {role} has {MAX_ENTRIES} files and resource dirs already; put them in a folder")
        self.files[role][name] = src
        return name

    def set_resource_dirs(self, role: str, resource_dirs: Mapping[str, Any], near: Path | None = None) -> None:
        """Replace the resource dirs of ``role`` with ``{name: folder}``."""
        what = f"set_{role}_resource_dirs"
        if not isinstance(resource_dirs, Mapping):
            raise RecipeError(f"{what} takes a dict of name -> folder, got {type(resource_dirs).__name__}")
        if len(resource_dirs) + len(self.files[role]) > MAX_ENTRIES:
            raise RecipeError(f"{what}: at most {MAX_ENTRIES} files and resource dirs per side")
        checked: dict[str, Path] = {}
        for name, folder in resource_dirs.items():
            check_entry_name(name, f"{what}: resource dir")
            if name in self.files[role]:
                self._taken(role, name, "resource dir")
            if not isinstance(folder, (str, os.PathLike)):
                raise RecipeError(f"{what}: the folder of {name!r} must be a path, got {type(folder).__name__}")
            src = _existing(folder, near, f"{what}: resource dir {name!r}")
            if not src.is_dir():
                raise RecipeError(f"{what}: resource dir {name!r} is {src}, which is not a folder; pass a "
                                  f"folder (or send a single file with add_{role}_file)")
            checked[name] = src
        self.resource_dirs[role] = checked
        self.empty = {e for e in self.empty if e[0] != role}

    def to_config(self) -> dict[str, list[str]]:
        """The job.json keys (only those with entries: jobs without files look as they always did)."""
        out: dict[str, list[str]] = {}
        for role in ROLES:
            if self.files[role]:
                out[f"{role}_files"] = sorted(self.files[role])
            if self.resource_dirs[role]:
                out[f"{role}_resource_dirs"] = sorted(self.resource_dirs[role])
        return out

    def sources(self) -> list[Path]:
        return [p for d in (self.files, self.resource_dirs) for r in ROLES for p in d[r].values()]

    def export_to(self, job_folder: Path) -> None:
        """Copy every entry into a job folder being exported (file contents are copied by the
        operating system, not read into this process)."""
        for role in ROLES:
            for name, src in self.files[role].items():
                _copy_entry(src, job_folder / entry_path(role, "files", name), f"{role} file {name!r}")
            for name, src in self.resource_dirs[role].items():
                dest = job_folder / entry_path(role, "resources", name)
                if (role, name) in self.empty:
                    dest.mkdir(parents=True, exist_ok=True)
                else:
                    _copy_entry(src, dest, f"{role} resource dir {name!r}")

    # -- the job folder side ----------------------------------------------------------------------

    @classmethod
    def from_job_folder(cls, folder: str | os.PathLike[str], config: Mapping[str, Any],
                        roles: Iterable[str] = ROLES, mode: str = "copy") -> JobFiles:
        """The entries a (validated) job.json lists, found in ``folder``. Refuses, naming the
        problem, a listed file that is missing, an entry of the wrong kind, and any symbolic link
        that leads out of the folder."""
        folder = Path(folder)
        root = folder.resolve()
        validate_files_config(config, f"{folder}/job.json")
        out = cls(mode)
        for role in roles:
            for kind, key in (("files", f"{role}_files"), ("resources", f"{role}_resource_dirs")):
                for name in config.get(key, []):
                    rel = entry_path(role, kind, name)
                    path = folder / rel
                    _check_confined(folder, root, path, rel)
                    if kind == "files":
                        if not path.exists():
                            raise RecipeError(f"the job lists the {role} file {name!r} ({key}) but its folder "
                                              f"has no {rel}; export the job again")
                        out.files[role][name] = path
                    else:
                        if path.exists() and not path.is_dir():
                            raise RecipeError(f"the job's {role} resource dir {name!r} ({rel}) is a file, not a folder")
                        if not path.exists():
                            out.empty.add((role, name))
                        out.resource_dirs[role][name] = path
        return out

    # -- a site's work dir ------------------------------------------------------------------------

    def stage(self, workspace: SiteWorkspace, role: str) -> None:
        """Put ``role``'s entries into the site's work dir (before its @collab.init runs) and
        register its resource dirs. An entry already there (a site that rejoins a job) is replaced."""
        work = workspace.path
        for name, src in self.files.get(role, {}).items():
            self._place(src, work / name, f"{role} file {name!r}")
        for name, src in self.resource_dirs.get(role, {}).items():
            dest = work / name
            if (role, name) in self.empty:  # folders travel as their files: an empty one as nothing
                _remove(dest)
                dest.mkdir(parents=True)
            else:
                self._place(src, dest, f"{role} resource dir {name!r}")
            workspace._resource_dirs[name] = dest

    def _place(self, src: Path, dest: Path, what: str) -> None:
        _remove(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            if self.mode == "move":
                shutil.move(os.fspath(src), os.fspath(dest))
            elif self.mode == "link":
                if src.is_dir():
                    shutil.copytree(src, dest, copy_function=_link_or_copy)
                else:
                    _link_or_copy(os.fspath(src), os.fspath(dest))
            else:
                _copy_entry(src, dest, what)
        except OSError as exc:
            raise RecipeError(f"cannot put the {what} into {dest.parent}: {exc}") from exc


def _existing(path: str | os.PathLike[str], near: Path | None, what: str) -> Path:
    """An absolute, normalized path (symbolic links kept, so a file keeps its own name): as given
    (relative to the working directory) or next to the module that builds the recipe."""
    raw = os.fspath(path)
    if not isinstance(raw, str) or not raw or "\0" in raw:
        raise RecipeError(f"{what}: {path!r} is not a path")
    candidates = [Path(os.path.abspath(raw))]
    if not os.path.isabs(raw) and near is not None:
        candidates.append(Path(os.path.abspath(near / raw)))
    for c in candidates:
        if c.exists():
            return c
    looked = " or ".join(str(c) for c in candidates)
    raise RecipeError(f"{what}: {raw!r} does not exist (looked for {looked}); pass the path of an "
                      f"existing file or folder")


def _check_confined(folder: Path, root: Path, path: Path, rel: str) -> None:
    """``path`` and everything under it stay inside the job ``folder`` (``root``: resolved), following
    symbolic links."""
    def inside(p: Path) -> bool:
        return p.resolve().is_relative_to(root)

    if not inside(path):
        raise RecipeError(f"refusing the job: {rel} is a symbolic link to {path.resolve()}, outside the job "
                          f"folder; copy the file into the job instead")
    if path.is_dir():
        for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
            for entry in (*dirnames, *filenames):
                p = Path(dirpath) / entry
                if p.is_symlink() and not inside(p):
                    sub = p.relative_to(folder).as_posix()
                    raise RecipeError(f"refusing the job: {sub} is a symbolic link to {p.resolve()}, outside "
                                      f"the job folder; copy the file into the job instead")


def _remove(dest: Path) -> None:
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.is_dir():
        shutil.rmtree(dest)


def _copy_entry(src: Path, dest: Path, what: str) -> None:
    try:
        if not src.exists():
            raise RecipeError(f"the {what} ({src}) no longer exists; it was there when it was added to the recipe")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest, symlinks=False, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest)
    except OSError as exc:
        raise RecipeError(f"cannot copy the {what} from {src} to {dest}: {exc}") from exc


def _link_or_copy(src: str, dest: str) -> str:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)
    return dest
