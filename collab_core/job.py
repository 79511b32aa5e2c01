"""Job folders: ``recipe.export(path)`` writes one, ``collab run PATH`` runs one.

Layout::

    JOB/
      job.json        schema "collab.job", version 1: name, recipe class, api, min_clients,
                      required plugins, and the server and client as {module, class, args}
      code/           the user's source files the job imports (relative layout kept)

Objects are recorded by import path and constructor arguments. Arguments are read back from the
object: ``obj.collab_export_args()`` if it defines one, else the attribute of the same name as each
constructor parameter (``self.num_rounds = num_rounds``). Values must be JSON data.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
import json
import mmap
import os
import shutil
import sys
import sysconfig
import types
from pathlib import Path
from typing import Any

from .errors import ExportError, RecipeError
from .loading import (
    CODE_DIR,
    DEFAULT_ALLOWED_MODULES,
    JOB_FILE,
    JOB_SETTINGS,
    SCHEMA,
    VERSION,
    JobPolicy,
    build_named_objects,
    build_object,
    check_job_path,
    set_build_policy,
    validate_job_config,
)
from .props import PROP_KEYS, validate_props_config
from .recipe import CollabRecipe, RecipeBase, job_settings
from .run import Run

#: files at least this big are read as memory maps when a job folder is packed (not copied)
_MMAP_FILES = 64 << 10



def _module_name(module: types.ModuleType) -> str:
    if module.__name__ != "__main__":
        return module.__name__
    file = getattr(module, "__file__", None)
    if not file or file.startswith("<") or not Path(file).is_file():
        where = "an interactive session" if not file else f"{file} (not a file on disk)"
        raise ExportError(
            f"cannot export code defined in {where}, e.g. `python -` or a notebook cell; save the "
            f"@collab functions or classes in a .py file and import it or run it as a script"
        )
    spec = getattr(module, "__spec__", None)
    if spec is not None and spec.name and spec.name != "__main__":  # python -m package.module
        return spec.name
    return Path(file).stem


def _constructor_args(obj: Any) -> dict[str, Any]:
    cls = type(obj)
    custom = getattr(obj, "collab_export_args", None)
    if callable(custom):
        args = custom()
        if not isinstance(args, dict):
            raise ExportError(f"{cls.__qualname__}.collab_export_args() must return a dict, got {type(args).__name__}")
        return args
    if cls.__init__ is object.__init__:
        return {}
    args: dict[str, Any] = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self":
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ExportError(
                f"cannot export {cls.__qualname__}: its constructor takes *{name}; define "
                f"collab_export_args(self) returning the keyword arguments that rebuild it"
            )
        for attr in (name, f"_{name}"):
            if hasattr(obj, attr):
                args[name] = getattr(obj, attr)
                break
        else:
            raise ExportError(
                f"cannot export {cls.__qualname__}: its constructor parameter {name!r} is not stored "
                f"as self.{name}; store it, or define collab_export_args(self) returning the "
                f"constructor's keyword arguments"
            )
    return args


def _describe_object(obj: Any, role: str) -> tuple[dict[str, Any], types.ModuleType]:
    if isinstance(obj, types.ModuleType):
        return {"module": _module_name(obj)}, obj
    cls = type(obj)
    if "<locals>" in cls.__qualname__:
        raise ExportError(
            f"cannot export the {role}: class {cls.__qualname__} is defined inside a function; "
            f"define it at module level so the job can import it"
        )
    module = sys.modules[cls.__module__]
    args = _constructor_args(obj)
    try:
        json.dumps(args)
    except (TypeError, ValueError):
        bad = [k for k, v in args.items() if not _is_json(v)]
        raise ExportError(
            f"cannot export the {role} {cls.__qualname__}: constructor argument(s) {bad} are not JSON "
            f"data (numbers, strings, lists, dicts); pass a path or a name instead and load the "
            f"object inside the class"
        ) from None
    return {"module": _module_name(module), "class": cls.__qualname__, "args": args}, module


def describe_client(obj: Any) -> dict[str, Any]:
    """``{module, class, args}`` of a client object or module, as a job config records it (so
    another process can rebuild it with :func:`build_object`)."""
    desc, _ = _describe_object(obj, "client")
    return desc


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _is_library(path: Path) -> bool:
    lib_dirs = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib", "platstdlib")}
    text = str(path)
    return "site-packages" in text or "dist-packages" in text or any(text.startswith(d) for d in lib_dirs)


@functools.lru_cache(maxsize=1)
def _installed_packages() -> frozenset[str]:
    """Top-level import names of installed distributions (editable installs too); read once."""
    return frozenset(importlib.metadata.packages_distributions())


def _user_sources(modules: list[types.ModuleType]) -> dict[str, Path]:
    """The .py files of the user's modules and of every loaded module under the same folders.

    Modules of installed distributions (collab itself, editable installs included) are never
    the user's code."""
    installed = _installed_packages()
    roots: list[Path] = []
    for module in modules:
        file = getattr(module, "__file__", None)
        if not file or _module_name(module).partition(".")[0] in installed:
            continue
        path = Path(file).resolve()
        depth = _module_name(module).count(".")
        root = path.parents[depth + (1 if path.name == "__init__.py" else 0)]
        if root not in roots:
            roots.append(root)
    found: dict[str, Path] = {}
    main = sys.modules.get("__main__")
    for name, mod in list(sys.modules.items()):
        if mod is main and mod not in modules:
            continue  # the script that built the recipe (job.py) is not part of the job
        if mod not in modules and name.partition(".")[0] in installed:
            continue
        file = getattr(mod, "__file__", None)
        if not file or not file.endswith(".py"):
            continue
        path = Path(file).resolve()
        if _is_library(path) or not path.is_file():
            continue
        for root in roots:
            if path.is_relative_to(root):
                found.setdefault(str(path.relative_to(root)), path)
                break
    return found


def export_job(recipe: RecipeBase, path: Path) -> Path:
    spec = recipe.build_job()
    server, server_module = _describe_object(spec.server, "server")
    client, client_module = _describe_object(spec.client, "client")
    modules = [server_module, client_module]
    named: dict[str, dict[str, Any]] = {}
    for role, objects in (("server", spec.server_objects), ("client", spec.client_objects)):
        for name, obj in objects.items():
            desc, module = _describe_object(obj, f"{role}_objects[{name!r}]")
            named.setdefault(f"{role}_objects", {})[name] = desc
            modules.append(module)
    filter_config, decomposers = _filters_config(spec, modules)
    sources = _user_sources(modules)
    path = Path(path)
    job_files = spec.files
    for src in job_files.sources() if job_files else ():
        if src.resolve().is_relative_to(path.resolve()) or path.resolve().is_relative_to(src.resolve()):
            raise ExportError(f"cannot export to {path}: the job's file {src} is inside it (or it is inside "
                              f"that folder); export to another folder")
    if path.exists() and any(path.iterdir()):
        if not (path / JOB_FILE).exists():
            raise ExportError(f"{path} exists and is not a job folder; choose an empty or new folder")
        shutil.rmtree(path)
    for obj in (spec.server, spec.client, *spec.server_objects.values(), *spec.client_objects.values()):
        extra = getattr(obj, "collab_export_files", None)
        if callable(extra) and not isinstance(obj, types.ModuleType):
            sources.update(extra())
    code = path / CODE_DIR
    code.mkdir(parents=True, exist_ok=True)
    for rel, src in sorted(sources.items()):
        dest = code / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
    config = {
        "schema": SCHEMA,
        "version": VERSION,
        "job_name": spec.job_name,
        "recipe": spec.recipe_class,
        "api": spec.api,
        "min_clients": spec.min_clients,
        "required_plugins": list(spec.required_plugins),
        "server": server,
        "client": client,
        "tracking": list(spec.tracking),
        "code": sorted(sources),
        **named,  # optional keys server_objects / client_objects: {name: {module, class, args}}
    }
    for key in PROP_KEYS:  # optional keys: jobs without properties look as they always did
        if (spec.props or {}).get(key):
            config[key] = spec.props[key]
    config.update(job_settings(recipe))  # optional: sync_task_timeout, max_call_threads_* when set
    if filter_config:  # optional: [{side, direction, object | name+options, tasks, clients, instance}]
        config["filters"] = filter_config
    if decomposers:  # optional: import paths of the job's wire serializers
        config["decomposers"] = decomposers
    if job_files:  # optional keys server_files, client_files, server/client_resource_dirs: names
        job_files.export_to(path)
        config.update(job_files.to_config())
    (path / JOB_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


def _filters_config(spec: Any, modules: list[types.ModuleType]) -> tuple[list[dict], list[str]]:
    """job.json's "filters" and "decomposers" of a JobSpec; their modules join ``modules`` (so
    their code travels with the job)."""
    from . import filters as _filters

    def describe(obj: Any, where: str) -> dict[str, Any]:
        desc, module = _describe_object(obj, where)
        modules.append(module)
        return desc

    config = _filters.to_config(spec.filters, describe)
    paths = []
    for item in spec.decomposers:
        path = _filters.decomposer_path(item, _module_name)
        module = sys.modules.get(item.__module__) if not isinstance(item, str) else next(
            (sys.modules[p] for p in _prefixes(path) if p in sys.modules), None)
        if module is not None:
            modules.append(module)
        paths.append(path)
    return config, paths


def _prefixes(path: str) -> list[str]:
    parts = path.replace(":", ".").split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def read_job_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    file = path / JOB_FILE
    if not file.is_file():
        raise RecipeError(f"{path} is not a job folder: {JOB_FILE} is missing. Write one with recipe.export(path)")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecipeError(f"{file} is not valid JSON: {exc}") from None
    config = validate_job_config(config, str(file))
    config["props"] = validate_props_config(config, str(file))
    return config


def load_job(path: str | Path) -> CollabRecipe:
    """Rebuild the recipe of an exported job folder (its code folder goes on sys.path)."""
    path = Path(path).resolve()
    config = read_job_config(path)
    code = str(path / CODE_DIR)
    if code not in sys.path:
        sys.path.insert(0, code)
    server = build_object(config["server"], "server")
    client = build_object(config["client"], "client")
    recipe = CollabRecipe(
        job_name=config["job_name"],
        server=server,
        client=client,
        server_objects=build_named_objects(config, "server"),
        client_objects=build_named_objects(config, "client"),
        min_clients=config["min_clients"],
        required_plugins=config.get("required_plugins", ()),
        tracking=config.get("tracking") or None,
        **{name: config[name] for name in JOB_SETTINGS if name in config},
    )
    props = config["props"]
    for name, value in props["server_props"].items():
        recipe.set_server_prop(name, value)
    for name, value in props["client_props"].items():
        recipe.set_client_prop(name, value)
    if props["per_site_config"]:
        recipe.set_per_site_config(props["per_site_config"])
    from . import filters as _filters

    recipe._filters_of().extend(_filters.from_config(config.get("filters"), build_object))
    if config.get("decomposers"):
        recipe.add_decomposers(config["decomposers"])
    from .site_workspace import JobFiles

    recipe._job_files = JobFiles.from_job_folder(path, config)  # checked: names, kinds, no link out
    return recipe


def run_job_folder(path: str | Path, env: str = "sim", num_clients: int | tuple[int, ...] | None = None,
                   workspace: str | Path | None = None, **env_options: Any) -> Run:
    """``collab run``: rebuild the job's recipe and execute it in the named environment."""
    from .registry import check_required_plugins, get_registry
    from .topology import count_sites

    config = read_job_config(path)
    check_required_plugins(config.get("required_plugins", ()))
    env_factory = get_registry().environment(env)
    if num_clients is None:
        num_clients = config["min_clients"]
    elif count_sites(num_clients, "--clients") < config["min_clients"]:  # a hierarchy: every level counts
        raise RecipeError(f"job {config['job_name']!r} needs at least {config['min_clients']} clients "
                          f"(its min_clients); run it with --clients {config['min_clients']} or more")
    _check_env_options(env, env_factory, {"num_clients": num_clients, **env_options})
    if workspace is not None:
        env_options["workspace"] = workspace
    environment = env_factory(num_clients=num_clients, **env_options)
    recipe = load_job(path)
    return recipe.execute(environment)


#: the command-line flag of each environment option `collab run` passes
CLI_FLAGS = {"num_clients": "--clients", "kit": "--kit", "workspace": "--workspace", "progress": "--progress"}


def _check_env_options(env: str, factory: Any, options: dict[str, Any]) -> None:
    """Say which command-line flag a named environment needs, instead of a TypeError later."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return
    missing = [name for name, p in params.items()
               if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
               and name not in options and name != "self"]
    if missing:
        flags = ", ".join(CLI_FLAGS.get(m, f"--{m.replace('_', '-')}") for m in missing)
        raise RecipeError(f"--env {env} needs {flags}" + (
            " (an admin startup kit, from `collab provision`)" if "kit" in missing else ""))
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = [k for k, v in options.items() if v is not None and k not in params and not accepts_any]
    if unknown:
        flags = ", ".join(CLI_FLAGS.get(k, k) for k in unknown)
        raise RecipeError(f"--env {env} does not take {flags}")


def _job_files(root: Path) -> list[tuple[str, Path]]:
    """(relative posix path, file) of every file of a job folder. A symlink is followed only if it
    stays inside the folder; one that leaves it is refused."""
    found: list[tuple[str, Path]] = []
    real_root = root.resolve()
    seen: set[Path] = set()

    def walk(folder: Path, rel: str) -> None:
        real = folder.resolve()
        if real in seen:
            return
        seen.add(real)
        for entry in sorted(folder.iterdir(), key=lambda p: p.name):
            name = entry.name
            if name == "__pycache__":
                continue
            sub = f"{rel}/{name}" if rel else name
            if entry.is_symlink():
                target = entry.resolve()
                if not target.is_relative_to(real_root):
                    raise RecipeError(
                        f"refusing to pack {root}: {sub} is a symbolic link to {target}, outside the job "
                        f"folder; copy the file into the job instead")
            if entry.is_dir():
                walk(entry, sub)
            elif entry.is_file():
                found.append((check_job_path(sub), entry))

    walk(root, "")
    return found


def pack_job(path: str | Path, exclude: Any = None) -> dict[str, Any]:
    """Every file of a job folder as {relative posix path: wire.Blob} (to send it to another
    process): big files are memory maps, so packing a job costs no copy of its bytes. ``exclude``
    (a function of the relative path) leaves files out, e.g. the server's own files."""
    from . import wire

    path = Path(path)
    read_job_config(path)
    files: dict[str, Any] = {}
    for rel, file in _job_files(path):
        if exclude is not None and exclude(rel):
            continue
        size = file.stat().st_size
        if size >= _MMAP_FILES:
            with open(file, "rb") as f:
                files[rel] = wire.Blob(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
        else:
            files[rel] = wire.Blob(file.read_bytes())
    return files


def unpack_job(files: dict[str, Any], dest: str | Path) -> Path:
    """Write files from :func:`pack_job` under ``dest``, refusing any path that escapes it, then
    check its job.json."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    if not isinstance(files, dict):
        raise RecipeError("a job's files must be a {path: bytes} mapping")
    if JOB_FILE not in files:
        raise RecipeError(f"the job has no {JOB_FILE}")
    for rel, data in files.items():
        check_job_path(rel)
        try:
            view = memoryview(data)
        except TypeError:
            raise RecipeError(f"bad job file entry {rel!r}: its content is {type(data).__name__}, not bytes") from None
        target = (root / rel).resolve()
        if not target.is_relative_to(root) or target == root:
            raise RecipeError(f"refusing job file path {rel!r}: it escapes the job folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(target, flags, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(view)
        del view
    read_job_config(dest)
    return dest


class JobCode:
    """A job's code imported into this process, and removed again when the job ends.

    The job folder's ``code/`` goes first on ``sys.path``; :meth:`unload` takes it off and forgets
    every module imported from it, so the next job (perhaps with its own ``client.py``) starts clean.
    ``allowed_modules`` (None: any) is what a site that does not run custom code may build.
    """

    def __init__(self, path: str | Path, custom_code: bool = True,
                 allowed_modules: tuple[str, ...] | list[str] | None = None):
        self.path = Path(path).resolve()
        self.config = read_job_config(self.path)
        self.code = self.path / CODE_DIR
        self.custom_code = custom_code
        if not custom_code and allowed_modules is None:
            allowed_modules = DEFAULT_ALLOWED_MODULES
        self.policy = JobPolicy(code_dir=self.code if custom_code else None, custom_code=custom_code,
                                allowed_modules=None if custom_code else tuple(allowed_modules or ()))
        self._added = False

    def build(self, role: str) -> Any:
        if self.custom_code and self.code.is_dir() and str(self.code) not in sys.path:
            sys.path.insert(0, str(self.code))
            self._added = True
        importlib.invalidate_caches()
        with set_build_policy(self.policy):
            return build_object(self.config[role], role)

    def build_objects(self, role: str) -> dict[str, Any]:
        """The job's named objects of ``role`` (``server_objects`` / ``client_objects``), built."""
        with set_build_policy(self.policy):
            return build_named_objects(self.config, role)

    def unload(self) -> None:
        if self._added and str(self.code) in sys.path:
            sys.path.remove(str(self.code))
        for name, mod in list(sys.modules.items()):
            file = getattr(mod, "__file__", None)
            if file and Path(file).resolve().is_relative_to(self.path):
                del sys.modules[name]
