"""How a process loads a deployed job's objects, and what a job may name.

A job (job.json plus code) is hostile input to the server and to every site: its names, paths and
descriptors are checked here with one set of rules (:func:`validate_job_config`), objects are
built only from classes (or modules) that the process's :class:`JobPolicy` allows, checked before
anything is imported, and scripts are looked for only inside the job's code folder.

Importing a job module never starts an environment: while a deployed process imports job code,
building or running a recipe at module level (a script without ``if __name__ == "__main__":``)
stops the import at that line (:class:`JobScriptStopped`); the module keeps what it defined above.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import posixpath
import re
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from .errors import RecipeError

log = logging.getLogger("collab.job")

SCHEMA = "collab.job"
VERSION = 1
JOB_FILE = "job.json"
CODE_DIR = "code"

# -- what a job may name ----------------------------------------------------------------------------

#: A job's name: it names folders, so letters, digits, "_", "." and "-" only (as RecipeBase checks).
JOB_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
#: A job id as a server makes it (``<name>-<hex>``).
JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,160}")
_MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_OBJECT_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_MAX_PATH = 1024
#: What a site that does not run custom code builds when its kit names nothing else: the standard
#: recipes' own components (those that would run a job's script refuse to, see job_script()).
DEFAULT_ALLOWED_MODULES = ("collab_core.recipes",)


def check_job_name(name: object, what: str = "job_name") -> str:
    if not isinstance(name, str) or not JOB_NAME_RE.fullmatch(name):
        raise RecipeError(
            f"{what} {name!r} is not valid: use 1-128 letters, digits, '_', '.' or '-', starting with a "
            f"letter or digit (it names folders)"
        )
    return name


def check_job_path(rel: object, what: str = "job file") -> str:
    """A path inside a job folder, as jobs carry them: relative, '/'-separated, normalized (no '',
    '.' or '..' parts, no backslash). Returns it; raises RecipeError naming the problem."""
    if not isinstance(rel, str) or not rel:
        raise RecipeError(f"refusing {what} path {rel!r}: paths are non-empty strings")
    if len(rel) > _MAX_PATH or "\\" in rel or "\0" in rel or rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        raise RecipeError(f"refusing {what} path {rel!r}: paths are relative, '/'-separated, without drive or NUL")
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise RecipeError(
            f"refusing {what} path {rel!r}: write it without '..', '.' or empty parts (e.g. "
            f"{posixpath.normpath(rel).lstrip('./') or 'name'!r}); paths must stay inside the job folder"
        )
    return rel


def _check_descriptor(desc: object, role: str, file: str) -> None:
    if not isinstance(desc, dict):
        raise RecipeError(f"{file}: the {role} must be {{module, class, args}}, got {type(desc).__name__}")
    module = desc.get("module")
    if not isinstance(module, str) or not _MODULE_RE.fullmatch(module):
        raise RecipeError(f"{file}: the {role}'s module {module!r} is not a dotted module name")
    cls = desc.get("class")
    if cls is not None and (not isinstance(cls, str) or not _MODULE_RE.fullmatch(cls)
                            or any(part.startswith("__") for part in cls.split("."))):
        raise RecipeError(f"{file}: the {role}'s class {cls!r} is not a class name (dotted identifiers, no dunders)")
    args = desc.get("args", {})
    if not isinstance(args, dict) or not all(isinstance(k, str) and k.isidentifier() for k in args):
        raise RecipeError(f"{file}: the {role}'s args must be an object of keyword arguments, got {args!r}")


#: CollabRecipe's run settings, recorded in job.json when set (None: the environment's default)
JOB_SETTINGS = ("sync_task_timeout", "max_call_threads_for_server", "max_call_threads_for_client")


def check_job_setting(name: str, value: Any, where: str = "CollabRecipe") -> Any:
    """Validate one of :data:`JOB_SETTINGS`: ``sync_task_timeout`` a positive number of seconds,
    the ``max_call_threads_*`` integers >= 1; None leaves the environment's default."""
    if value is None:
        return None
    if name == "sync_task_timeout":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 or value == float("inf"):
            raise RecipeError(f"{where}: sync_task_timeout must be a positive number of seconds "
                              f"(how long the job waits for its sites at the start), got {value!r}")
        return float(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise RecipeError(f"{where}: {name} must be an integer >= 1 (the number of calls a "
                          f"{'server' if name.endswith('server') else 'client site'} serves at once), got {value!r}")
    return value


def validate_job_config(config: object, file: str = JOB_FILE) -> dict[str, Any]:
    """Check a job.json document as a server and every site do before using it (a job is hostile
    input). Raises RecipeError naming the first problem."""
    if not isinstance(config, dict):
        raise RecipeError(f"{file} must hold a JSON object")
    if config.get("schema") != SCHEMA:
        raise RecipeError(f"{file} is not a collab job (schema {config.get('schema')!r}, expected {SCHEMA!r})")
    if config.get("version") != VERSION:
        raise RecipeError(
            f"{file} has job format version {config.get('version')!r}; this collab reads version "
            f"{VERSION}. Re-export the job with this collab version"
        )
    for key in ("job_name", "api", "min_clients", "server", "client"):
        if key not in config:
            raise RecipeError(f"{file} lacks the key {key!r}")
    check_job_name(config["job_name"], f"{file}: job_name")
    if not isinstance(config["api"], str):
        raise RecipeError(f"{file}: api must be a string")
    mc = config["min_clients"]
    if not isinstance(mc, int) or isinstance(mc, bool) or mc < 1:
        raise RecipeError(f"{file}: min_clients must be an integer >= 1, got {mc!r}")
    for role in ("server", "client"):
        _check_descriptor(config[role], role, file)
        objects = config.get(f"{role}_objects", {})
        if not isinstance(objects, dict):
            raise RecipeError(f"{file}: {role}_objects must be an object of name -> {{module, class, args}}")
        for name, desc in objects.items():
            if not isinstance(name, str) or not _OBJECT_NAME_RE.fullmatch(name):
                raise RecipeError(f"{file}: {role}_objects has the invalid object name {name!r} (a letter, "
                                  f"then letters, digits or underscores)")
            _check_descriptor(desc, f"{role}_objects[{name!r}]", file)
    plugins = config.get("required_plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise RecipeError(f"{file}: required_plugins must be a list of requirement strings")
    tracking = config.get("tracking") or []
    if not isinstance(tracking, list) or not all(isinstance(t, dict) and isinstance(t.get("name"), str)
                                                 for t in tracking):
        raise RecipeError(f"{file}: tracking must be a list of {{name, options}} objects")
    for name in JOB_SETTINGS:  # optional keys (CollabRecipe's sync_task_timeout, max_call_threads_*)
        if name in config:
            check_job_setting(name, config[name], file)
    from .filters import validate_config

    validate_config(config.get("filters"), file, _check_descriptor)
    decomposers = config.get("decomposers", [])
    if not isinstance(decomposers, list) or not all(
            isinstance(d, str) and len(d) <= 512 and "." in d.replace(":", ".")
            and _MODULE_RE.fullmatch(d.replace(":", "."))
            and not any(p.startswith("__") for p in d.replace(":", ".").split(".")) for d in decomposers):
        raise RecipeError(f"{file}: decomposers must be a list of import paths like 'mypkg.types.Point'")
    code = config.get("code", [])
    if not isinstance(code, list):
        raise RecipeError(f"{file}: code must be a list of paths")
    for rel in code:
        check_job_path(rel, "code file")
    from .site_workspace import validate_files_config

    validate_files_config(config, file)  # optional server_files/client_files/..._resource_dirs
    return config


# -- building a job's objects ------------------------------------------------------------------------


@attrs.frozen
class JobPolicy:
    """What a deployed job may make this process build: ``allowed_modules`` None means any module
    (the site runs custom code); a tuple means those modules and their submodules only."""

    code_dir: Path | None
    custom_code: bool = True
    allowed_modules: tuple[str, ...] | None = None

    def allows(self, module: str) -> bool:
        if self.allowed_modules is None:
            return True
        return any(module == m or module.startswith(m + ".") for m in self.allowed_modules)


_building = threading.local()


def job_policy() -> JobPolicy | None:
    """The policy of the deployed job this code runs for (None in a simulation or a driver)."""
    policy = getattr(_building, "policy", None)
    if policy is not None:
        return policy
    from .context import current

    ctx = current(required=False)
    return None if ctx is None else ctx.job.extras.get("job_policy")


def job_script(train_script: str | Path) -> str:
    """Where a component built from a deployed job finds the job's script: inside the job's code
    folder only (never elsewhere on the machine), and only where the site runs custom code."""
    policy = job_policy()
    if policy is None:
        return str(train_script)
    if not policy.custom_code:
        raise RecipeError(
            f"this site does not run custom code (its kit has allow_custom_code=false), and the job "
            f"needs its script {str(train_script)!r}; ask the site's administrator, or use a recipe "
            f"whose components the site allows"
        )
    rel = check_job_path(str(train_script), "train_script")
    if policy.code_dir is None:
        raise RecipeError(f"the job has no code folder for its script {rel!r}")
    root = policy.code_dir.resolve()
    path = (root / rel).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise RecipeError(f"the job's script {rel!r} is not in the job's code folder")
    return str(path)


class JobScriptStopped(BaseException):
    """Raised inside a job module being imported by a deployed process when it reaches the line
    that builds or runs a recipe at import time (a script without ``if __name__ == "__main__":``).
    A BaseException, so the script's own ``except Exception`` cannot swallow it."""

    def __init__(self, file: str, line: int, what: str):
        super().__init__(f"{file}:{line}: {what}")
        self.file = file
        self.line = line
        self.what = what


def stop_if_loading_job(what: str) -> None:
    """Called where a recipe is built or run: while a deployed process imports job code, stop the
    import here (the module keeps what it defined above this line)."""
    if not getattr(_building, "importing", 0):
        return
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] == "collab_core":
        frame = frame.f_back
    file, line = (frame.f_code.co_filename, frame.f_lineno) if frame is not None else ("?", 0)
    raise JobScriptStopped(file, line, what)


@contextlib.contextmanager
def set_build_policy(policy: JobPolicy | None) -> Iterator[None]:
    """Build a deployed job's objects under ``policy`` (on this thread)."""
    old = getattr(_building, "policy", None)
    _building.policy = policy
    try:
        yield
    finally:
        _building.policy = old


@contextlib.contextmanager
def _importing() -> Iterator[None]:
    _building.importing = getattr(_building, "importing", 0) + 1
    try:
        yield
    finally:
        _building.importing -= 1


def _names_after(file: str, line: int) -> list[tuple[str, int]]:
    """Top-level functions and classes defined after ``line`` of ``file``: (name, line)."""
    import ast

    try:
        tree = ast.parse(Path(file).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return []
    return [(n.name, n.lineno) for n in tree.body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.lineno > line]


class DefinedAfterStop:
    """Stands in a stopped job module for a function or class the script defines after the line
    where the import stopped: using it raises a RecipeError that names both lines and the fix
    (instead of a NameError that says nothing about why the name is missing)."""

    def __init__(self, name: str, line: int, stop: JobScriptStopped):
        self._collab_name, self._collab_line, self._collab_stop = name, line, stop

    def _fail(self, *args: Any, **kwargs: Any) -> Any:
        stop = self._collab_stop
        raise RecipeError(
            f"{self._collab_name!r} is defined at line {self._collab_line} of {stop.file}, after line "
            f"{stop.line} where the script {stop.what} at import time; a deployed process stops importing "
            f"the script at that line, so {self._collab_name!r} does not exist there. Define it above line "
            f"{stop.line}, or put the code that builds and runs the recipe under "
            f"`if __name__ == \"__main__\":`"
        )

    __call__ = _fail

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return self._fail()

    def __mro_entries__(self, bases: tuple) -> tuple:
        return self._fail()

    def __repr__(self) -> str:
        return f"<{self._collab_name}: defined after the line where the job's import stopped>"


def import_job_module(name: str, role: str = "job") -> types.ModuleType:
    """Import a job's module as a deployed process does: a module-level ``recipe.execute(...)`` (or
    recipe construction) stops the import at that line instead of starting another environment."""
    module = sys.modules.get(name)
    if module is not None:
        return module
    parent = name.rpartition(".")[0]
    try:
        if parent:
            with _importing():
                importlib.import_module(parent)
        spec = importlib.util.find_spec(name)
    except JobScriptStopped as stop:
        raise RecipeError(f"importing the job's {role} module {name!r} stopped in its package at "
                          f"{stop.file}:{stop.line} ({stop.what})") from None
    except ImportError as exc:
        raise RecipeError(f"the job's {role} module {name!r} cannot be imported: {exc}") from exc
    if spec is None or spec.loader is None:
        raise RecipeError(f"the job's {role} module {name!r} cannot be imported: no module named {name!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        with _importing():
            spec.loader.exec_module(module)
    except JobScriptStopped as stop:
        module.__collab_stopped__ = stop  # type: ignore[attr-defined]
        later = _names_after(stop.file, stop.line) if stop.file == getattr(module, "__file__", None) else []
        for later_name, later_line in later:
            module.__dict__.setdefault(later_name, DefinedAfterStop(later_name, later_line, stop))
        log.info("job module %s: import stopped at line %d (%s at import time); it keeps what it defined "
                 "above that line", name, stop.line, stop.what)
        if later:
            log.warning(
                "job module %s defines %s after line %d, where it %s at import time; in a deployed process "
                "those definitions do not exist. Put the code that builds and runs the recipe under "
                "`if __name__ == \"__main__\":`", name, ", ".join(n for n, _ in later), stop.line, stop.what)
    except ImportError as exc:
        sys.modules.pop(name, None)
        raise RecipeError(f"the job's {role} module {name!r} cannot be imported: {exc}") from exc
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def build_named_objects(config: dict[str, Any], role: str) -> dict[str, Any]:
    """Build a validated job config's ``<role>_objects`` (name -> object), in their order."""
    return {name: build_object(desc, f"{role}_objects[{name!r}]")
            for name, desc in (config.get(f"{role}_objects") or {}).items()}


def build_object(desc: dict[str, Any], role: str) -> Any:
    """Import and build the server or client described in a job config (``{module, class, args}``).

    In a deployed process (a :class:`JobPolicy` is active) the module must be allowed by the
    policy, checked before anything is imported; what is built must be a class (or the module)."""
    _check_descriptor(desc, role, JOB_FILE)
    policy = job_policy()
    if policy is not None and not policy.allows(desc["module"]):
        raise RecipeError(
            f"this site does not run custom code (its kit has allow_custom_code=false) and the job's "
            f"{role} module {desc['module']!r} is not among its allowed_modules "
            f"({', '.join(policy.allowed_modules or ()) or 'none'}); nothing was imported. Ask the "
            f"site's administrator to allow it, or use a recipe whose components the site allows"
        )
    module = import_job_module(desc["module"], role)
    if "class" not in desc:
        return module
    obj: Any = module
    for part in desc["class"].split("."):
        obj = vars(obj).get(part) if hasattr(obj, "__dict__") else None
        if obj is None:
            stop = getattr(module, "__collab_stopped__", None)
            if stop is not None:
                raise RecipeError(
                    f"the job's {role} class {desc['class']!r} is not defined when {desc['module']!r} is "
                    f"imported: the import stops at line {stop.line} of {stop.file}, which {stop.what} at "
                    f"import time, and {desc['class']} is defined after that line. Define it above line "
                    f"{stop.line}, or put the code that builds and runs the recipe under "
                    f"`if __name__ == \"__main__\":`"
                )
            raise RecipeError(f"the job's {role} class {desc['class']!r} is not in module {desc['module']!r}")
    if not isinstance(obj, type):
        raise RecipeError(
            f"the job's {role} {desc['module']}.{desc['class']} is a {type(obj).__name__}, not a class; a job "
            f"names classes (or modules) only"
        )
    return obj(**desc.get("args", {}))
