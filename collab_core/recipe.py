"""Recipes: a job's description -- what runs on the server, what runs on each client -- that any
environment can execute and that can be exported to a job folder."""

from __future__ import annotations

import copy
import sys
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, Protocol

import attrs

from .app import App, check_object_names, describe
from .errors import RecipeError
from .loading import JOB_SETTINGS, check_job_name, check_job_setting, stop_if_loading_job
from .props import check_json_value, check_per_site_config, check_prop_name, empty_props
from .registry import check_required_plugins
from .run import Run


@attrs.frozen
class JobSpec:
    """What an environment needs to run a recipe."""

    job_name: str
    api: str
    server: Any
    client: Any
    min_clients: int
    required_plugins: tuple[str, ...]
    recipe_class: str
    tracking: tuple[dict[str, Any], ...] = ()
    #: {"server_props", "client_props", "per_site_config"} (JSON data; see collab_core.props)
    props: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    #: named objects of each side (server_objects= / client_objects=): name -> object or module
    server_objects: dict[str, Any] = attrs.field(factory=dict)
    client_objects: dict[str, Any] = attrs.field(factory=dict)
    #: the files and resource dirs that travel with the job (collab_core.site_workspace.JobFiles)
    files: Any = None
    #: call and result filters (add_server_output_filter, ...): collab_core.filters.FilterSpec
    filters: tuple[Any, ...] = ()
    #: wire serializers for this job (add_decomposers): import paths
    decomposers: tuple[str, ...] = ()


class Environment(Protocol):
    """Where a recipe runs. Registered through ``collab_register_environments``."""

    name: str

    def deploy(self, recipe: RecipeBase) -> Run: ...


class RecipeBase:
    """Base of every recipe: a job's server and client, the plugins it needs, its trackers.

    To write a recipe, subclass it with only the parts that differ: set :attr:`api` if it is not
    the Collab API, and implement :meth:`make_server` (the object with ``@collab.main``). The client
    side comes from the constructor's keywords -- ``client=`` (an object or module with
    ``@collab.publish`` methods) or ``train_script=`` (a Client API script), optionally in a worker
    group (``launch_external_process=True, command="torchrun ..."``) -- and so do ``tracking=`` and
    ``required_plugins=``. ``execute(env)`` and ``export(path)`` then work in every environment.
    """

    #: The programming model this recipe uses; explicit, never guessed from the code.
    api: ClassVar[str] = "collab"
    #: Plugins every instance needs, in addition to those passed to the constructor.
    required_plugins: tuple[str, ...] = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> RecipeBase:
        # before any subclass's __init__ runs (which may save model files): a deployed process
        # importing the job's module stops at the line that builds the recipe
        stop_if_loading_job("builds a recipe")
        return super().__new__(cls)

    def __init__(
        self,
        job_name: str,
        min_clients: int = 1,
        required_plugins: Iterable[str] = (),
        tracking: Any = None,
        *,
        client: Any = None,
        train_script: str | None = None,
        script_args: str | list[str] = "",
        launch_external_process: bool = False,
        command: str | None = None,
        subprocess_timeout: float = 600.0,
    ):
        check_job_name(job_name)
        if not isinstance(min_clients, int) or isinstance(min_clients, bool) or min_clients < 1:
            raise RecipeError(f"min_clients must be an integer >= 1, got {min_clients!r}")
        if isinstance(required_plugins, str):
            raise RecipeError("required_plugins is a list of requirements, e.g. ['collab-torchrun>=0.1']")
        self.job_name = job_name
        self.min_clients = min_clients
        self.required_plugins = tuple(type(self).required_plugins) + tuple(required_plugins)
        self.tracking: list[dict[str, Any]] = []
        if tracking:
            for entry in tracking_entries(tracking):
                self.add_tracking(entry["name"], **entry["options"])
        self.client = self._make_client(client, train_script, script_args, launch_external_process, command,
                                        subprocess_timeout)
        self._props = empty_props()
        self._per_site_set = False

    # -- the parts a recipe author writes ---------------------------------------------------------

    def make_server(self) -> Any:
        """The server: an object (or module) with one ``@collab.main``."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_server()")

    def make_client(self) -> Any:
        """The client: by default what the constructor's client keywords described."""
        if self.client is None:
            raise RecipeError(f"{type(self).__name__} has no client: pass client= or train_script=")
        return self.client

    # -- the client side, for every recipe --------------------------------------------------------

    def _make_client(self, client: Any, train_script: str | None, script_args: Any, launch_external_process: bool,
                     command: str | None, subprocess_timeout: float) -> Any:
        if client is not None and train_script is not None:
            raise RecipeError("pass either client= (Collab API) or train_script= (Client API), not both")
        if launch_external_process:
            return self._subprocess_client(client, train_script, script_args, command, subprocess_timeout)
        if command is not None:
            raise RecipeError("command= is for launch_external_process=True; pass that too")
        if train_script is not None:
            from .bridge import ScriptClient, resolve_script

            return ScriptClient(resolve_script(train_script, _caller_dir()), script_args)
        if script_args:
            raise RecipeError("script_args is for train_script recipes; pass train_script= too")
        return client

    def _subprocess_client(self, client: Any, train_script: str | None, script_args: Any, command: str | None,
                           subprocess_timeout: float) -> Any:
        """launch_external_process=True: the site forwards its calls to a worker group (collab-torchrun)."""
        requirement = "collab-torchrun>=0.1"
        self.required_plugins = tuple(dict.fromkeys((*self.required_plugins, requirement)))
        check_required_plugins([requirement])
        from collab_torchrun.client import SubprocessClient

        if not command or not isinstance(command, str):
            raise RecipeError("launch_external_process=True needs command=, e.g. 'torchrun --nproc_per_node=2' or 'python'")
        if not isinstance(subprocess_timeout, (int, float)) or subprocess_timeout <= 0:
            raise RecipeError(f"subprocess_timeout must be a positive number of seconds, got {subprocess_timeout!r}")
        if (train_script is None) == (client is None):
            raise RecipeError("launch_external_process=True needs either train_script= (Client API) or "
                              "client= (a module or object with @collab.publish methods), not both")
        if train_script is not None:
            from .bridge import resolve_script

            return SubprocessClient(command, subprocess_timeout,
                                    train_script=str(resolve_script(train_script, _caller_dir())),
                                    script_args=script_args)
        from .job import describe_client

        return SubprocessClient(command, subprocess_timeout, client=describe_client(client))

    @property
    def train_script(self) -> str | None:
        """The Client API script of this recipe, if it has one."""
        return getattr(self.client, "train_script", None)

    # -- tracking ---------------------------------------------------------------------------------

    def add_tracking(self, name: str, **options: Any) -> RecipeBase:
        """Send the metrics client code logs to the tracker ``name`` ("tensorboard", "mlflow",
        "wandb", or any installed tracker plugin) with ``options`` (e.g. ``tracking_uri=``).
        Checked at once: a tracker that is not installed fails here, with its install line."""
        from .tracking import normalize_config

        requirement = "collab-tracking>=0.1"
        check_required_plugins([requirement])
        entry = normalize_config([{"name": name, "options": options}])[0]
        if any(e["name"] == name for e in self.tracking):
            raise RecipeError(f"tracker {name!r} is already configured for this recipe")
        self.tracking.append(entry)
        self.required_plugins = tuple(dict.fromkeys((*self.required_plugins, requirement)))
        return self

    # -- properties and per-site configuration -------------------------------------------------

    def _props_of(self) -> dict[str, dict[str, Any]]:
        if not hasattr(self, "_props"):  # a subclass that did not call RecipeBase.__init__
            self._props = empty_props()
            self._per_site_set = False
        return self._props

    def set_server_prop(self, name: str, value: Any) -> RecipeBase:
        """Give the server app the property ``name`` (JSON data): ``collab.get_app_prop(name)``."""
        check_prop_name(name)
        self._props_of()["server_props"][name] = check_json_value(value, f"server prop {name!r}")
        return self

    def set_client_prop(self, name: str, value: Any) -> RecipeBase:
        """Give every client app the property ``name`` (JSON data); a site's per-site config
        overrides it on that site."""
        check_prop_name(name)
        self._props_of()["client_props"][name] = check_json_value(value, f"client prop {name!r}")
        return self

    def set_per_site_config(self, config: dict[str, dict[str, Any]]) -> RecipeBase:
        """Give each named client site its own properties, e.g. ``{"site-1": {"data_path": ...}}``:
        on that site they override the client props (``collab.get_app_prop``). Set once per recipe;
        a site the run does not have is reported with a warning when the job starts."""
        props = self._props_of()
        if self._per_site_set:
            raise RecipeError("set_per_site_config was already called for this recipe; pass every site's "
                              "config in one dict")
        checked = check_per_site_config(config)
        if not checked:
            raise RecipeError("set_per_site_config got an empty dict; pass {site name: {name: value}}")
        for site, values in checked.items():  # on top of add_client_config(..., clients=[...])
            props["per_site_config"].setdefault(site, {}).update(values)
        self._per_site_set = True
        return self

    def configured_sites(self) -> list[str]:
        """The site names the per-site config describes (in the order given)."""
        return list(self._props_of()["per_site_config"])

    # -- files that travel with the job (collab_core.site_workspace) ---------------------------

    def _files_of(self) -> Any:
        if getattr(self, "_job_files", None) is None:  # also for a subclass that skipped __init__
            from .site_workspace import JobFiles

            self._job_files = JobFiles()
        return self._job_files

    def add_server_file(self, file_path: str | Path) -> RecipeBase:
        """Send a file or folder with the job to the server: it is at ``collab.workspace / name``
        there (``name``: its own name) before the server's @collab.init runs. Relative paths are
        looked for in the working directory, then next to the module that builds the recipe."""
        self._files_of().add_file("server", file_path, _caller_dir())
        return self

    def add_client_file(self, file_path: str | Path) -> RecipeBase:
        """Send a file or folder with the job to every client: each site has its own copy at
        ``collab.workspace / name`` before its @collab.init runs."""
        self._files_of().add_file("client", file_path, _caller_dir())
        return self

    def set_server_resource_dirs(self, resource_dirs: dict[str, str | Path]) -> RecipeBase:
        """Send folders with the job to the server, by name (``{"data": "path/to/data"}``, replacing
        earlier ones): ``collab.workspace.get_resource_dir("data")`` is the server's copy."""
        self._files_of().set_resource_dirs("server", resource_dirs, _caller_dir())
        return self

    def set_client_resource_dirs(self, resource_dirs: dict[str, str | Path]) -> RecipeBase:
        """Send folders with the job to every client, by name: on each site
        ``collab.workspace.get_resource_dir(name)`` is that site's own copy."""
        self._files_of().set_resource_dirs("client", resource_dirs, _caller_dir())
        return self

    # -- named objects ----------------------------------------------------------------------------

    def _named_objects(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return (check_object_names(getattr(self, "server_objects", None), "server"),
                check_object_names(getattr(self, "client_objects", None), "client"))

    # -- filters, top-level config, decomposers (collab_core.filters) --------------------------------

    def _filters_of(self) -> list[Any]:
        if not hasattr(self, "_filters"):
            self._filters: list[Any] = []
            self._filter_instances: dict[int, int] = {}
        return self._filters

    def _add_filter(self, side: str, direction: str, filter: Any, tasks: Any, clients: Any,
                    options: dict[str, Any] | None, kinds: tuple[str, ...] = ("call", "result")) -> RecipeBase:
        from . import filters as _filters

        specs = self._filters_of()
        what = f"add_{side}_{'input' if direction == 'in' else 'output'}_filter"
        items = filter if isinstance(filter, (list, tuple)) else [filter]
        if not items:
            raise RecipeError(f"{what} got an empty list of filters")
        patterns = _filters.check_patterns(tasks)
        sites = _filters.check_clients(clients)
        for item in items:
            if isinstance(item, str):
                from .registry import get_registry

                get_registry().filter(item)  # not installed: fails here, naming what is
                opts = check_json_value(dict(options or {}), f"{what}({item!r}) options")
                spec = _filters.FilterSpec(side, direction, None, item, opts, patterns, sites,
                                           _filters.new_instance_id(), kinds)
            else:
                if options:
                    raise RecipeError(f"{what}: options= is for a registered filter named by a string; "
                                      f"give a filter object its settings in its constructor")
                if item is None:
                    raise RecipeError(f"{what} got None; pass a filter object or a registered filter's name")
                _filters.check_filter_object(item, direction, what, kinds)
                instance = self._filter_instances.setdefault(id(item), _filters.new_instance_id())
                spec = _filters.FilterSpec(side, direction, item, None, {}, patterns, sites, instance, kinds)
            specs.append(spec)
        return self

    def add_server_output_filter(self, filter: Any, tasks: Any = None, *,
                                 options: dict[str, Any] | None = None) -> RecipeBase:
        """Filter what the server sends: the arguments of the calls it makes (its call filters)
        and the results it returns (its result filters), before they are encoded. ``filter`` is
        an object with ``@collab.call_filter`` / ``@collab.result_filter`` methods (or a list of
        them), or the name of a registered filter built with ``options``. ``tasks`` limits it to
        some methods (names or shell patterns; ``"*.train"`` matches ``<object>.train``)."""
        return self._add_filter("server", "out", filter, tasks, None, options)

    def add_server_input_filter(self, filter: Any, tasks: Any = None, *,
                                options: dict[str, Any] | None = None) -> RecipeBase:
        """Filter what the server receives: the results of its calls and the arguments of the
        calls it serves, after they are decoded. See :meth:`add_server_output_filter`."""
        return self._add_filter("server", "in", filter, tasks, None, options)

    def add_client_input_filter(self, filter: Any, tasks: Any = None, clients: Any = None, *,
                                options: dict[str, Any] | None = None) -> RecipeBase:
        """Filter what each client receives (the calls it serves, the results of its own calls);
        ``clients`` limits it to some sites. Each site gets its own copy of a filter object."""
        return self._add_filter("client", "in", filter, tasks, clients, options)

    def add_client_output_filter(self, filter: Any, tasks: Any = None, clients: Any = None, *,
                                 options: dict[str, Any] | None = None) -> RecipeBase:
        """Filter what each client sends (its results, the arguments of its own calls);
        ``clients`` limits it to some sites. Each site gets its own copy of a filter object."""
        return self._add_filter("client", "out", filter, tasks, clients, options)

    # Fox's names: one kind (call or result filters) of one direction, with a pattern
    def add_server_outgoing_call_filters(self, pattern: str, filters: Any) -> RecipeBase:
        """Fox's name: the call filters of :meth:`add_server_output_filter`; ``pattern`` is ``tasks``."""
        return self._add_filter("server", "out", filters, pattern, None, None, ("call",))

    def add_server_incoming_call_filters(self, pattern: str, filters: Any) -> RecipeBase:
        """Fox's name: the call filters of :meth:`add_server_input_filter`."""
        return self._add_filter("server", "in", filters, pattern, None, None, ("call",))

    def add_server_outgoing_result_filters(self, pattern: str, filters: Any) -> RecipeBase:
        """Fox's name: the result filters of :meth:`add_server_output_filter`."""
        return self._add_filter("server", "out", filters, pattern, None, None, ("result",))

    def add_server_incoming_result_filters(self, pattern: str, filters: Any) -> RecipeBase:
        """Fox's name: the result filters of :meth:`add_server_input_filter`."""
        return self._add_filter("server", "in", filters, pattern, None, None, ("result",))

    def add_client_outgoing_call_filters(self, pattern: str, filters: Any) -> RecipeBase:
        """Fox's name: the call filters of :meth:`add_client_output_filter`."""
        return self._add_filter("client", "out", filters, pattern, None, None, ("call",))

    def add_client_incoming_call_filters(self, pattern: str, filters: Any) -> RecipeBase:
        """Fox's name: the call filters of :meth:`add_client_input_filter`."""
        return self._add_filter("client", "in", filters, pattern, None, None, ("call",))

    def add_client_outgoing_result_filters(self, pattern: str, filters: Any) -> RecipeBase:
        """Fox's name: the result filters of :meth:`add_client_output_filter`."""
        return self._add_filter("client", "out", filters, pattern, None, None, ("result",))

    def add_client_incoming_result_filters(self, pattern: str, filters: Any) -> RecipeBase:
        """Fox's name: the result filters of :meth:`add_client_input_filter`."""
        return self._add_filter("client", "in", filters, pattern, None, None, ("result",))

    def add_server_config(self, config: dict[str, Any]) -> RecipeBase:
        """Top-level configuration of the server app: each key becomes a server app property
        (``collab.get_app_prop(key)``). JSON data."""
        if not isinstance(config, dict):
            raise RecipeError(f"add_server_config takes a dict of name: value, got {type(config).__name__}")
        for name, value in config.items():
            self.set_server_prop(name, value)
        return self

    def add_client_config(self, config: dict[str, Any], clients: Any = None) -> RecipeBase:
        """Top-level configuration of the client apps: each key becomes a client app property,
        on every client, or with ``clients=["site-1", ...]`` on those sites only (as per-site
        config). JSON data."""
        from .filters import check_clients

        if not isinstance(config, dict):
            raise RecipeError(f"add_client_config takes a dict of name: value, got {type(config).__name__}")
        sites = check_clients(clients)
        if sites is None:
            for name, value in config.items():
                self.set_client_prop(name, value)
            return self
        checked = check_per_site_config({site: dict(config) for site in sites}, "add_client_config")
        per_site = self._props_of()["per_site_config"]
        for site, values in checked.items():
            per_site.setdefault(site, {}).update(values)
        return self

    def add_decomposers(self, decomposers: Iterable[Any]) -> RecipeBase:
        """Wire serializers this job's values need, registered on every site when the job starts:
        import paths (``"mypkg.types.Point"``) or the objects, each an attrs class or dataclass
        (registered as with ``wire.register_type``), a ``wire.Serializer``, or a function returning
        Serializers. Checked here; recorded by import path, so they travel to PocEnv sites."""
        from .filters import check_decomposer

        if isinstance(decomposers, (str, type)) or not isinstance(decomposers, Iterable):
            decomposers = [decomposers]
        decomposers = list(decomposers)
        if not decomposers:
            raise RecipeError("add_decomposers got an empty list")
        # NVFlare's TensorDecomposer() / NumpyArrayDecomposer(): types the wire carries natively
        paths = [check_decomposer(d) for d in decomposers if not getattr(d, "collab_native_decomposer", False)]
        if not hasattr(self, "_decomposers"):
            self._decomposers: list[str] = []
        self._decomposers.extend(p for p in paths if p not in self._decomposers)
        return self

    def process_env(self, env: Any) -> None:
        """Called with the environment before the recipe is deployed to it (``execute``, and
        ``export(path, env=...)``). Override it to adapt the job to an environment; the default
        does nothing."""

    # -- running ----------------------------------------------------------------------------------

    def build_job(self) -> JobSpec:
        """What an environment runs: the server and client, checked."""
        server, client = self.make_server(), self.make_client()
        server_objects, client_objects = self._named_objects()
        App(server, role="server", objects=server_objects)
        client_app = App(client, role="client", objects=client_objects)
        if not client_app.publish:
            raise RecipeError(
                f"the client ({describe(client)}) publishes no methods; decorate the functions the "
                f"server calls with @collab.publish"
            )
        return JobSpec(
            job_name=self.job_name,
            api=self.api,
            server=server,
            client=client,
            min_clients=self.min_clients,
            required_plugins=self.required_plugins,
            recipe_class=f"{type(self).__module__}:{type(self).__qualname__}",
            tracking=tuple(self.tracking),
            props=copy.deepcopy(self._props_of()),
            server_objects=server_objects,
            client_objects=client_objects,
            files=self._files_of().copy(),
            filters=tuple(self._filters_of()),
            decomposers=tuple(getattr(self, "_decomposers", ())),
        )

    def check(self) -> None:
        """Check, before anything starts, that every required plugin is installed."""
        check_required_plugins(self.required_plugins)

    def execute(self, env: Environment) -> Run:
        """Run this recipe in ``env`` (e.g. ``SimEnv(num_clients=5)``) and return the :class:`Run`.

        In a process that a job was deployed to (a PocEnv/ProdEnv server or site importing the job's
        module) this never starts another environment: see :func:`collab_core.loading.stop_if_loading_job`."""
        stop_if_loading_job("runs recipe.execute()")
        deploy = getattr(env, "deploy", None)
        if not callable(deploy):
            raise RecipeError(
                f"{env!r} is not an environment (it has no deploy method); pass e.g. SimEnv(num_clients=5)"
            )
        self.check()
        self.process_env(env)
        return deploy(self)

    def export(self, path: str | Path, env: Any = None) -> Path:
        """Write this recipe as a job folder (job.json plus the user's source files); with ``env``,
        :meth:`process_env` sees it first."""
        from .job import export_job

        if env is not None:
            self.process_env(env)

        return export_job(self, Path(path))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(job_name={self.job_name!r}, min_clients={self.min_clients})"


def tracking_entries(tracking: Any) -> list[dict[str, Any]]:
    """``"mlflow"``, ``["tensorboard", ("mlflow", {...})]`` or ``[{"name", "options"}]`` as a list of
    ``{"name", "options"}`` (not yet checked against the installed trackers)."""
    if isinstance(tracking, str):
        tracking = [tracking]
    out = []
    for item in tracking:
        if isinstance(item, str):
            out.append({"name": item, "options": {}})
        elif isinstance(item, dict) and "name" in item:
            out.append({"name": item["name"], "options": dict(item.get("options") or {})})
        elif isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str):
            out.append({"name": item[0], "options": dict(item[1])})
        else:
            raise RecipeError(f"tracking entries are tracker names like 'tensorboard', or (name, options); got {item!r}")
    return out


def _caller_dir() -> Path | None:
    """The folder of the module that builds the recipe (scripts are also looked for there)."""
    try:
        file = getattr(_caller_module(), "__file__", None)
    except RecipeError:
        return None
    return Path(file).resolve().parent if file else None


def _caller_module() -> types.ModuleType:
    """The module of the first frame outside collab_core (the user's module, possibly __main__)."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not (name == "collab_core" or name.startswith("collab_core.")):
            module = sys.modules.get(name)
            if module is None:
                break
            return module
        frame = frame.f_back
    raise RecipeError(
        "CollabRecipe() without server= and client= looks for @collab.main and @collab.publish "
        "functions in the calling module, but could not find that module; pass server= and client="
    )


class CollabRecipe(RecipeBase):
    """The Collab API recipe: a ``@collab.main`` server and ``@collab.publish`` clients.

    ``server`` and ``client`` are objects (instances of your classes) or modules. Leave both out to
    use the module that creates the recipe (module-level functions, no classes).

    Client API: pass ``train_script="client.py"`` (and ``script_args``) instead of ``client``; the
    script uses ``import collab_core.client as flare`` and the server drives it with
    ``collab.clients.execute(fl_model=...)`` and ``collab.clients.stop()``. Add
    ``launch_external_process=True, command="torchrun --nproc_per_node=N"`` to run the client side
    in a worker group per site (collab-torchrun).

    ``server_objects={"metric_receiver": MetricReceiver()}`` and ``client_objects={...}`` add named
    objects to a side: their ``@collab.publish`` methods are called qualified
    (``collab.server.metric_receiver.accept(m)``, ``collab.clients(target="name").method(...)``) or,
    when no other object of that side publishes the name, unqualified; their ``@collab.init`` and
    ``@collab.final`` run after the main object's. Each client site gets its own copies.
    """

    api = "collab"

    def __init__(
        self,
        job_name: str,
        server: Any = None,
        client: Any = None,
        server_objects: dict[str, Any] | None = None,
        client_objects: dict[str, Any] | None = None,
        min_clients: int = 1,
        required_plugins: Iterable[str] = (),
        train_script: str | None = None,
        script_args: str | list[str] = "",
        launch_external_process: bool = False,
        command: str | None = None,
        subprocess_timeout: float = 600.0,
        tracking: Any = None,
        sync_task_timeout: float | None = None,
        max_call_threads_for_server: int | None = None,
        max_call_threads_for_client: int | None = None,
    ):
        self.sync_task_timeout = check_job_setting("sync_task_timeout", sync_task_timeout)
        self.max_call_threads_for_server = check_job_setting("max_call_threads_for_server",
                                                             max_call_threads_for_server)
        self.max_call_threads_for_client = check_job_setting("max_call_threads_for_client",
                                                             max_call_threads_for_client)
        if server is None and client is None and train_script is None:
            server = client = _caller_module()
        elif server is None:
            raise RecipeError("CollabRecipe needs server= (the object or module with @collab.main), or neither "
                              "server= nor client= to use the calling module's functions")
        elif client is None and train_script is None:
            raise RecipeError("CollabRecipe got a server but no client: pass client= (Collab API) or "
                              "train_script= (Client API), or neither to use the calling module's functions")
        for obj, role in ((server, "server"), (client, "client")):
            if isinstance(obj, type):
                raise RecipeError(
                    f"{role}={obj.__qualname__} is a class; pass an instance, e.g. {role}={obj.__qualname__}()"
                )
        super().__init__(job_name, min_clients, required_plugins, tracking, client=client,
                         train_script=train_script, script_args=script_args,
                         launch_external_process=launch_external_process, command=command,
                         subprocess_timeout=subprocess_timeout)
        self.server = server
        self.server_objects = check_object_names(server_objects, "server")
        self.client_objects = check_object_names(client_objects, "client")
        self.build_job()  # a missing @collab.main or a misplaced decorator fails here, at construction

    def make_server(self) -> Any:
        return self.server

    def __repr__(self) -> str:
        return (
            f"CollabRecipe(job_name={self.job_name!r}, server={describe(self.server)}, "
            f"client={describe(self.client)}, min_clients={self.min_clients})"
        )


def job_settings(recipe: Any) -> dict[str, Any]:
    """The run settings a recipe set (only those not None), as job.json records them."""
    return {name: getattr(recipe, name) for name in JOB_SETTINGS if getattr(recipe, name, None) is not None}

