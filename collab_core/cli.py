"""The ``collab`` command line. Core provides ``plugins`` and ``run``; plugins add more subcommands
through the ``collab_register_commands`` hook."""

from __future__ import annotations

import argparse
import json
import logging
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
    parser.add_argument("job", help="a job folder written by recipe.export(path)")
    parser.add_argument("--env", default="sim", help="environment name (see `collab plugins`); default: sim")
    parser.add_argument("--clients", type=int, default=None, help="number of simulated clients")
    parser.add_argument("--workspace", default=None, help="where the run's workspace goes")
    parser.add_argument("--json", action="store_true", help="print the run summary as JSON")
    parser.add_argument("--result", metavar="FILE", default=None,
                        help="also write the run's result to FILE in the wire format "
                             "(read it back with collab_core.wire.read_frame)")


def _run_run(args: argparse.Namespace) -> int:
    from .job import run_job_folder

    run = run_job_folder(args.job, env=args.env, num_clients=args.clients, workspace=args.workspace)
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


def core_commands() -> list[Command]:
    return [
        Command("plugins", "list installed plugins, their versions and what they register",
                _plugins_arguments, _plugins_run),
        Command("run", "run an exported job folder in an environment", _run_arguments, _run_run),
        Command("recipes", "list installed named recipes", _plugins_arguments, _recipes_run),
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
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    command = getattr(args, "_command", None)
    if command is None:
        parser.print_help()
        return 2
    try:
        return int(command.run(args) or 0)
    except CollabError as exc:
        print(f"collab {command.name}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

__all__ = ["main", "build_parser", "core_commands"]
