"""``collab server start``, ``collab site start``, ``collab submit``, ``collab status``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from collab_core.errors import CollabError
from collab_core.lifeline import watch_lifeline
from collab_core.logs import SiteFilter
from collab_core.registry import Command

PROCESS_FORMAT = "%(asctime)s %(levelname)s [%(site)s] %(name)s: %(message)s"


def _setup_process_logging(name: str, verbose: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(SiteFilter(default=name))  # a site process's lines carry its name, job or not
    handler.setFormatter(logging.Formatter(PROCESS_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def _stop_on_signals(stop) -> None:
    def handler(signum, frame):
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kit", required=True, help="this participant's startup kit (from `collab provision`)")
    parser.add_argument("--workspace", default=None, help="where jobs and logs go (default: KIT/workspace)")
    parser.add_argument("--heartbeat", type=float, default=2.0, help="seconds between heartbeats (default 2)")
    parser.add_argument("--dead-after", type=float, default=30.0,
                        help="seconds of silence after which a peer counts as dead (default 30; a peer "
                             "whose process dies is noticed at once, this bounds hangs and lost networks)")
    parser.add_argument("--port-file", default=None, help=argparse.SUPPRESS)
    # the read end of a pipe whose other end the starting process (PocEnv) holds: stop when it closes
    parser.add_argument("--lifeline", type=int, default=None, help=argparse.SUPPRESS)


def _server_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    start = sub.add_parser("start", help="run a long-lived server (Ctrl-C or SIGTERM stops it)")
    _common(start)
    start.add_argument("--host", default=None, help="address to listen on (default: the kit's server host)")
    start.add_argument("--port", type=int, default=None, help="port to listen on (default: the kit's; 0 = any)")


def _server_run(args: argparse.Namespace) -> int:
    from .kit import Kit
    from .server import Server

    kit = Kit.load(args.kit)
    _setup_process_logging("server", args.verbose)
    server = Server(kit, args.workspace or Path(args.kit) / "workspace", host=args.host, port=args.port,
                    heartbeat=args.heartbeat, dead_after=args.dead_after)
    host, port = server.start()
    if args.port_file:
        tmp = Path(args.port_file + ".tmp")
        tmp.write_text(f"{host}:{port}")
        os.replace(tmp, args.port_file)
    print(f"collab server for project {kit.project} listening on {host}:{port}", file=sys.stderr, flush=True)
    _stop_on_signals(server.stop)
    if args.lifeline is not None:
        watch_lifeline(args.lifeline, server.stop, what="the server")
    server.serve_forever()
    return 0


def _site_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    start = sub.add_parser("start", help="run a site that dials out to the server and serves its jobs")
    _common(start)


def _site_run(args: argparse.Namespace) -> int:
    from .kit import Kit
    from .site import SiteAgent

    kit = Kit.load(args.kit)
    _setup_process_logging(kit.name, args.verbose)
    agent = SiteAgent(kit, args.workspace or Path(args.kit) / "workspace", heartbeat=args.heartbeat,
                      dead_after=args.dead_after, port_file=args.port_file)
    _stop_on_signals(agent.stop)
    if args.lifeline is not None:
        watch_lifeline(args.lifeline, agent.stop, what=f"site {kit.name}")
    agent.run()
    return 0


def _submit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="a job folder written by recipe.export(path)")
    parser.add_argument("--kit", required=True, help="an admin startup kit")
    parser.add_argument("--server", default=None, metavar="HOST:PORT", help="the server's address (default: the kit's)")
    parser.add_argument("--sites", default=None, help="comma-separated sites to run on (default: all connected)")
    parser.add_argument("--parents", default=None, metavar="CHILD=PARENT,...",
                        help="a hierarchical job (with --sites): each child site and its parent, e.g. "
                             "site-1-1=site-1,site-1-2=site-1 (sites not named are top-level)")
    parser.add_argument("--wait-timeout", type=float, default=60.0, help="how long to wait for the sites")
    parser.add_argument("--no-follow", action="store_true", help="print the job id and return at once")
    parser.add_argument("--workspace", default=None, help="where to write the logs (default: a temp folder)")
    parser.add_argument("--result", default=None, metavar="FILE", help="write the result in the wire format")
    parser.add_argument("--json", action="store_true", help="print the run summary as JSON")


def _parse_parents(text: str | None) -> dict[str, str] | None:
    """``--parents site-1-1=site-1,site-1-2=site-1`` as ``{child: parent}``."""
    if not text:
        return None
    parents: dict[str, str] = {}
    for pair in text.split(","):
        child, sep, parent = (x.strip() for x in pair.partition("="))
        if not sep or not child or not parent:
            raise CollabError(f"--parents takes CHILD=PARENT pairs separated by commas, e.g. "
                              f"site-1-1=site-1,site-1-2=site-1; got {pair.strip()!r}")
        parents[child] = parent
    return parents


def _submit_run(args: argparse.Namespace) -> int:
    import tempfile

    from collab_core.job import read_job_config

    from .admin import AdminClient
    from .envs import submit_and_follow

    kit = _admin_kit(args)
    sites = [s.strip() for s in args.sites.split(",") if s.strip()] if args.sites else None
    parents = _parse_parents(args.parents)
    if args.no_follow:
        with AdminClient(kit) as admin:
            print(admin.submit(args.job, sites=sites, wait_timeout=args.wait_timeout, follow=False,
                               parents=parents))
        return 0
    logging.getLogger("collab.tcp.env").setLevel(logging.INFO)

    def show(site: str, lines: list[str]) -> None:
        for line in lines:
            print(f"[{site}] {line}", file=sys.stderr, flush=True)

    ws = Path(args.workspace or tempfile.mkdtemp(prefix="collab-submit-"))
    run = submit_and_follow(kit, Path(args.job), ws, sites=sites, wait_timeout=args.wait_timeout, job_timeout=None,
                            job_name=read_job_config(args.job)["job_name"], started=time.monotonic(), on_log=show,
                            parents=parents)
    if args.result:
        from collab_core import wire

        with open(args.result, "wb") as f:
            wire.write_frame(f, run.result)
    summary = run.summary()
    print(json.dumps(summary, indent=2, default=str) if args.json else "\n".join(f"{k}: {v}" for k, v in summary.items()))
    return 0 if run.status == "finished" else 1


def _status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kit", required=True, help="an admin startup kit")
    parser.add_argument("--server", default=None, metavar="HOST:PORT", help="the server's address (default: the kit's)")
    parser.add_argument("--json", action="store_true")


def _status_run(args: argparse.Namespace) -> int:
    from .admin import AdminClient

    with AdminClient(_admin_kit(args)) as admin:
        status = admin.status()
    if args.json:
        print(json.dumps(status, indent=2, default=str))
        return 0
    print(f"project: {status['project']}")
    print(f"connected sites ({len(status['sites'])}): {', '.join(status['sites']) or 'none'}")
    print(f"running job: {status['current'] or 'none'}")
    for job in status["jobs"]:
        print(f"  {job['id']}: {job['status']}  sites={job['participants']}")
    return 0


def _admin_kit(args: argparse.Namespace):
    from .kit import Kit, parse_server

    kit = Kit.load(args.kit)
    if args.server:
        host, port = parse_server(args.server)
        kit = kit.with_server(host, port)
    return kit


def tcp_commands() -> list[Command]:
    return [
        Command("server", "run a collab server", _server_arguments, _server_run),
        Command("site", "run a collab site", _site_arguments, _site_run),
        Command("submit", "submit a job folder to a server and follow it", _submit_arguments, _submit_run),
        Command("status", "connected sites and jobs of a server", _status_arguments, _status_run),
    ]


__all__ = ["tcp_commands"]
