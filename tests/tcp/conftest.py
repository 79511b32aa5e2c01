"""Shared fixtures of the TCP plugin's tests."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from collab_tcp.kit import Kit, provision

PROJECT = "demo"
OTHER_PROJECT = "other"
SITES = ("site-1", "site-2", "site-3")
ADMIN = "admin@example.org"
#: provision needs a real port; environments point kits at the port they bound with ``with_server``.
PLACEHOLDER_SERVER = "127.0.0.1:1"


@attrs.frozen
class ProvisionedKits:
    """Kits of project ``demo`` (a server, site-1..site-3, one admin) and a site of project ``other``."""

    root: Path
    project: str
    server: Kit
    sites: dict[str, Kit]
    admin: Kit
    other_project: str
    other_server: Kit
    other_site: Kit


@pytest.fixture(scope="session")
def kits(tmp_path_factory: pytest.TempPathFactory) -> ProvisionedKits:
    """Provision once per test session. Kits point at 127.0.0.1:1; use ``kit.with_server``."""
    root = tmp_path_factory.mktemp("kits")
    main = provision(PROJECT, PLACEHOLDER_SERVER, list(SITES), [ADMIN], root / PROJECT)
    other = provision(OTHER_PROJECT, PLACEHOLDER_SERVER, ["site-1"], [], root / OTHER_PROJECT)
    return ProvisionedKits(
        root=root,
        project=PROJECT,
        server=Kit.load(main["server"]),
        sites={name: Kit.load(main[name]) for name in SITES},
        admin=Kit.load(main[ADMIN]),
        other_project=OTHER_PROJECT,
        other_server=Kit.load(other["server"]),
        other_site=Kit.load(other["site-1"]),
    )


# -- fixtures of the end-to-end tests (test_transport, test_jobs, test_faults, test_cli) ------------


@pytest.fixture
def make_cluster(kits: ProvisionedKits, tmp_path: Path):
    """A factory of in-process clusters (a Server and SiteAgents on threads on 127.0.0.1); every
    cluster it made is stopped at the end of the test."""
    from .helpers import Cluster

    made: list = []

    def make(**options) -> Cluster:
        cluster = Cluster(kits, tmp_path / f"cluster-{len(made)}", **options)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()
