"""The ``collab`` command line. Core provides ``plugins`` and ``run``; plugins add more subcommands
through the ``collab_register_commands`` hook."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from .errors import CollabError
from .registry import Command, get_registry


def _plugins_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _plugins_run(args: argparse.Namespace) -> int:
    plugins = get_registry().plugins()
    if args.json:
        print(json.dumps([p.to_dict() for p in plugins], indent=2))
        return 0
    rows = [("PLUGIN", "DISTRIBUTION", "VERSION", "REGISTERS")]
    for p in plugins:
        registers = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in p.components.items())
        rows.append((p.name, p.distribution, p.version, registers or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])
    return 0


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", nargs="?", default=None,
                        help="a job folder written by recipe.export(path) (or use --recipe)")
    parser.add_argument("--recipe", default=None, metavar="NAME",
                        help="run an installed named recipe instead of a job folder (see `collab recipes`); "
                             "its arguments with --arg")
    parser.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                        help="an argument of --recipe (repeatable); VALUE is read as JSON if it parses, "
                             "else as a string, e.g. --arg num_rounds=3 --arg train_script=train.py")
    parser.add_argument("--env", default="sim", help="environment name (see `collab plugins`); default: sim")
    parser.add_argument("--clients", type=_clients_arg, default=None,
                        help="number of clients (default: the job's min_clients), or a hierarchy: 3x2 is 3 "
                             "top-level sites with 2 children each")
    parser.add_argument("--kit", default=None, help="an admin startup kit (for --env prod)")
    parser.add_argument("--workspace", default=None, help="where the run's workspace goes")
    parser.add_argument("--json", action="store_true", help="print the run summary as JSON")
    show = parser.add_mutually_exclusive_group()
    show.add_argument("-q", "--quiet", action="store_const", const="off", dest="progress",
                      help="no progress lines while the job runs (warnings and errors still show)")
    show.add_argument("--progress", choices=["off", "normal", "verbose"], default=None,
                      help="what the console shows while the job runs (default: $COLLAB_PROGRESS or normal; "
                           "verbose adds every site's log lines)")
    parser.add_argument("--result", metavar="FILE", default=None,
                        help="also write the run's result to FILE in the wire format "
                             "(read it back with collab_core.wire.read_frame)")


def _clients_arg(text: str) -> int | tuple[int, ...]:
    from .topology import parse_shape

    try:
        return parse_shape(text)
    except CollabError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run_run(args: argparse.Namespace) -> int:
    from .job import run_job_folder

    options: dict = {}
    if args.progress is not None:
        options["progress"] = args.progress
    if args.kit is not None:
        options["kit"] = args.kit
    if (args.job is None) == (args.recipe is None):
        raise CollabError("collab run takes a job folder or --recipe NAME (one of them)")
    if args.recipe is not None:
        run = _run_named_recipe(args, options)
    else:
        if args.arg:
            raise CollabError("--arg goes with --recipe; a job folder carries its own arguments")
        run = run_job_folder(args.job, env=args.env, num_clients=args.clients, workspace=args.workspace, **options)
    if args.result:
        from . import wire

        with open(args.result, "wb") as f:
            wire.write_frame(f, run.result)
    summary = run.summary()
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        for key, value in summary.items():
            print(f"{key}: {value}")
    return 0 if run.status == "finished" else 1


def _parse_recipe_args(pairs: list[str]) -> dict:
    out: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.isidentifier():
            raise CollabError(f"--arg takes KEY=VALUE with KEY a Python name, got {pair!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _run_named_recipe(args: argparse.Namespace, options: dict):
    """``collab run --recipe fedavg --arg train_script=train.py ...``: build the named recipe
    from the installed ones, export it to the run's workspace and run it like a job folder."""
    import shutil
    import tempfile
    from pathlib import Path

    from .job import run_job_folder

    cls = get_registry().recipe(args.recipe)
    kwargs = _parse_recipe_args(args.arg)
    kwargs.setdefault("name", args.recipe)
    if args.clients is not None:
        from .topology import count_sites

        kwargs.setdefault("min_clients", count_sites(args.clients))  # every site of every level
    try:
        recipe = cls(**kwargs)
    except TypeError as exc:
        raise CollabError(f"recipe {args.recipe!r}: {exc}; see its arguments with "
                          f"`python -c \"help({cls.__module__}.{cls.__qualname__})\"`") from None
    folder = Path(tempfile.mkdtemp(prefix=f"collab-{args.recipe}-"))
    try:
        job = recipe.export(folder / "job")
        return run_job_folder(job, env=args.env, num_clients=args.clients, workspace=args.workspace, **options)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _recipes_run(args: argparse.Namespace) -> int:
    rows = []
    for comp in get_registry().components("recipe"):
        cls = comp.obj
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        rows.append({"name": comp.name, "class": f"{cls.__module__}.{cls.__qualname__}",
                     "distribution": comp.distribution, "version": comp.version, "summary": doc})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max([len(r["name"]) for r in rows] + [6])
    print(f"{'RECIPE'.ljust(width)}  {'FROM'.ljust(18)}  SUMMARY")
    for r in rows:
        print(f"{r['name'].ljust(width)}  {(r['distribution'] + ' ' + r['version']).ljust(18)}  {r['summary']}")
        print(f"{''.ljust(width)}  {''.ljust(18)}  {r['class']}")
    return 0


def _versions() -> list[tuple[str, str]]:
    """(distribution, version): collab-core first, then every distribution that provides a loaded
    plugin -- the plugins `collab plugins` lists."""
    from . import __version__
    from .registry import CORE_DISTRIBUTION

    out = [(CORE_DISTRIBUTION, __version__)]
    for p in get_registry().plugins():
        if (p.distribution, p.version) not in out and p.distribution not in (CORE_DISTRIBUTION, "local"):
            out.append((p.distribution, p.version))
    return out


class _VersionAction(argparse.Action):
    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        for dist, version in _versions():
            print(f"{dist} {version}")
        parser.exit()


def _new_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="the project folder to create (new or empty)")
    parser.add_argument("--force", action="store_true", help="write into a folder that is not empty")


def _new_run(args: argparse.Namespace) -> int:
    from .scaffold import new_project

    files = new_project(args.folder, force=args.force)
    print(f"created a collab project in {args.folder}:")
    for f in files:
        print(f"  {f}")
    print(f"run it:  cd {args.folder} && python job.py    (see its README.md)")
    return 0


def _clean_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep", type=int, default=0, help="keep the newest N runs of each kind (default 0)")
    parser.add_argument("--kind", choices=["sim", "poc", "prod"], action="append", default=None,
                        help="only runs of this environment (repeatable; default: all)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be removed")


def _clean_run(args: argparse.Namespace) -> int:
    from . import workspaces

    if args.keep < 0:
        raise CollabError("--keep must be >= 0")
    kinds = tuple(args.kind) if args.kind else workspaces.KINDS
    removed = workspaces.clean(args.keep, kinds, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for path in removed:
        print(f"{verb} {path}")
    print(f"{verb} {len(removed)} run folder(s) under {workspaces.root()} (runs still going are kept)")
    return 0


def core_commands() -> list[Command]:
    return [
        Command("plugins", "list installed plugins, their versions and what they register",
                _plugins_arguments, _plugins_run),
        Command("run", "run an exported job folder in an environment", _run_arguments, _run_run),
        Command("recipes", "list installed named recipes", _plugins_arguments, _recipes_run),
        Command("new", "create a runnable project (server, client, job, pyproject) to start from",
                _new_arguments, _new_run),
        Command("clean", "remove the workspaces of finished runs", _clean_arguments, _clean_run),
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="collab", description="collab: federated learning as plain Python."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-V", "--version", action=_VersionAction,
                        help="print the versions of collab-core and of every installed plugin, and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    registry = get_registry()
    for command in registry.components("command"):
        cmd: Command = command.obj
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_command=cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
    except CollabError as exc:
        print(f"collab: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    handler = logging.StreamHandler()
    handler.setLevel(level)  # a job's progress lines have their own console (collab_core.progress)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    command = getattr(args, "_command", None)
    if command is None:
        parser.print_help()
        return 2
    try:
        code = int(command.run(args) or 0)
        sys.stdout.flush()
        return code
    except CollabError as exc:
        print(f"collab {command.name}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`collab plugins --json | head`): stop quietly, as Unix tools do
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

__all__ = ["main", "build_parser", "core_commands"]
