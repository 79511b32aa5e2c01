"""Hierarchical federations: which client site is whose child.

A job's clients form a forest. Top-level sites have no parent (the server calls them its
children); every other site names its parent, another client of the job. The facade reads it:
``collab.child_clients`` (the server's: the top-level sites; a client's: its children),
``collab.has_children`` and ``collab.leaf_clients``. ``collab.clients`` stays every client site of
the job, at every level, as in NVFlare.

A shape is how an environment asks for one: ``num_clients=(3, 2)`` is 3 top-level sites with 2
children each, ``(3, 2, 2)`` goes one level deeper. Sites are named as NVFlare names them: the
top level ``site-1`` ... ``site-3``, the children of ``site-1`` are ``site-1-1`` and ``site-1-2``,
theirs ``site-1-1-1`` ... An explicit forest is ``parents={"child": "parent", ...}`` (sites left out
of it are top-level). A topology crosses the network as that mapping and is checked like any peer
input (:func:`check_parents`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from .errors import RecipeError

#: site names a topology may hold (the provisioning rule for participant names)
SITE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
#: the most sites one shape may make, and the deepest forest a topology may be
MAX_SITES = 10_000
MAX_DEPTH = 32


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def shape_of(num_clients: object, owner: str = "SimEnv") -> tuple[int, ...]:
    """``num_clients`` as a tuple of per-level fan-outs, or a RecipeError naming the fix.

    An int ``N`` is ``(N,)``: N top-level sites and no hierarchy.
    """
    example = f"{owner}(num_clients=3) or {owner}(num_clients=(3, 2)) for 3 top-level sites with 2 children each"
    if _is_count(num_clients):
        if num_clients < 1:  # type: ignore[operator]
            raise RecipeError(f"{owner} needs num_clients >= 1, got {num_clients!r}; e.g. {example}")
        return (num_clients,)  # type: ignore[return-value]
    if not isinstance(num_clients, (tuple, list)):
        raise RecipeError(f"{owner} num_clients must be an int or a tuple of ints, got "
                          f"{type(num_clients).__name__} {num_clients!r}; e.g. {example}")
    if not num_clients:
        raise RecipeError(f"{owner} num_clients=() names no level; e.g. {example}")
    if len(num_clients) > MAX_DEPTH:
        raise RecipeError(f"{owner} num_clients has {len(num_clients)} levels; at most {MAX_DEPTH} are allowed")
    for level, count in enumerate(num_clients):
        what = ("top-level sites" if level == 0 else "children of each top-level site" if level == 1
                else f"children of each site at level {level}")
        if not _is_count(count):
            raise RecipeError(f"{owner} num_clients={tuple(num_clients)!r}: the number of {what} must be "
                              f"an int, got {type(count).__name__} {count!r}; e.g. {example}")
        if count < 1:
            raise RecipeError(f"{owner} num_clients={tuple(num_clients)!r}: the number of {what} must be "
                              f">= 1, got {count}; e.g. {example}")
    total, width = 0, 1
    for count in num_clients:
        width *= count
        total += width
        if total > MAX_SITES:
            raise RecipeError(f"{owner} num_clients={tuple(num_clients)!r} makes more than {MAX_SITES} sites; "
                              f"use fewer levels or fewer children per site")
    return tuple(num_clients)


def count_sites(num_clients: object, owner: str = "SimEnv") -> int:
    """How many client sites ``num_clients`` (an int or a shape) makes, at every level."""
    total, width = 0, 1
    for count in shape_of(num_clients, owner):
        width *= count
        total += width
    return total


def parse_shape(text: str) -> int | tuple[int, ...]:
    """A command line's ``--clients``: ``"3"`` is 3 clients, ``"3x2"`` 3 top-level sites with 2
    children each (``"3x2x2"``: one level deeper)."""
    parts = str(text).strip().lower().split("x")
    try:
        counts = [int(p) for p in parts]
    except ValueError:
        raise RecipeError(f"--clients takes a number of clients (e.g. 3) or a hierarchy as "
                          f"TOPxCHILDREN (e.g. 3x2: 3 top-level sites with 2 children each), got {text!r}") from None
    shape = counts[0] if len(counts) == 1 else tuple(counts)
    if any(c < 1 for c in counts):
        raise RecipeError(f"--clients {text}: every number must be >= 1; e.g. --clients 3, or --clients 3x2 "
                          f"for 3 top-level sites with 2 children each")
    shape_of(shape, "--clients")  # the size limit
    return shape


def from_shape(num_clients: object, owner: str = "SimEnv") -> Topology:
    """The sites and parents of a shape, named as NVFlare names them, level by level
    (``site-1, site-2, site-3, site-1-1, site-1-2, site-2-1, ...``)."""
    shape = shape_of(num_clients, owner)
    sites = [f"site-{i}" for i in range(1, shape[0] + 1)]
    parents: dict[str, str] = {}
    level = sites
    for fan_out in shape[1:]:
        below = []
        for parent in level:
            for k in range(1, fan_out + 1):
                child = f"{parent}-{k}"
                parents[child] = parent
                below.append(child)
        sites.extend(below)
        level = below
    return Topology(sites, parents)


def check_parents(parents: object, sites: Iterable[str] | None = None, what: str = "parents",
                  server: str = "server") -> dict[str, str]:
    """Validate a ``{child: parent}`` mapping (hostile input: a job config, a message).

    Names must be site names; a parent must itself be a site of ``sites`` (when given) or another
    key; no site may be its own ancestor; the forest is at most :data:`MAX_DEPTH` deep. A parent
    of ``None`` or ``server`` means top-level (dropped from the result).
    """
    if parents is None:
        return {}
    if not isinstance(parents, Mapping):
        raise RecipeError(f"{what} must map each child site to its parent site, e.g. "
                          f"{{'site-1-1': 'site-1'}}, got {type(parents).__name__}")
    if len(parents) > MAX_SITES:
        raise RecipeError(f"{what} names {len(parents)} sites; at most {MAX_SITES} are allowed")
    known = None if sites is None else set(sites)
    out: dict[str, str] = {}
    for child, parent in parents.items():
        if not isinstance(child, str) or not SITE_NAME_RE.fullmatch(child) or child == server:
            raise RecipeError(f"{what}: {child!r} is not a client site name (1 to 64 letters, digits "
                              f"and '_.@-', starting with a letter or digit; not {server!r})")
        if parent is None or parent == server:
            continue
        if not isinstance(parent, str) or not SITE_NAME_RE.fullmatch(parent):
            raise RecipeError(f"{what}: the parent of {child!r} must be a site name or None, got {parent!r}")
        if parent == child:
            raise RecipeError(f"{what}: site {child!r} cannot be its own parent")
        if known is not None:
            for name in (child, parent):
                if name not in known:
                    raise RecipeError(f"{what}: {name!r} is not a site of this job; sites are: "
                                      f"{', '.join(sorted(known)[:20])}{' ...' if len(known) > 20 else ''}")
        out[child] = parent
    for start in out:  # walk up from every site: a loop or a too-deep chain is an error
        seen = [start]
        node = start
        while node in out:
            node = out[node]
            if node in seen:
                raise RecipeError(f"{what}: sites {' -> '.join([*seen, node])} form a loop; "
                                  f"every chain of parents must end at a top-level site")
            seen.append(node)
            if len(seen) > MAX_DEPTH:
                raise RecipeError(f"{what}: the chain above {start!r} is deeper than {MAX_DEPTH} levels")
    return out


class Topology:
    """The clients of a job as a forest: ``sites`` in their order, ``parents`` ``{child: parent}``.

    Only sites of ``sites`` count: a site whose parent is not among them (it did not load the job)
    is top-level, so the server reaches it directly.
    """

    __slots__ = ("sites", "parents", "_children", "_top")

    def __init__(self, sites: Sequence[str], parents: Mapping[str, str] | None = None):
        self.sites: tuple[str, ...] = tuple(sites)
        present = set(self.sites)
        self.parents: dict[str, str] = {c: p for c, p in (parents or {}).items() if c in present and p in present}
        self._children: dict[str, list[str]] = {}
        for site in self.sites:
            parent = self.parents.get(site)
            if parent is not None:
                self._children.setdefault(parent, []).append(site)
        self._top = [s for s in self.sites if s not in self.parents]

    @property
    def is_hierarchical(self) -> bool:
        return bool(self.parents)

    @property
    def top_level(self) -> list[str]:
        """The sites with no parent: the server's children."""
        return list(self._top)

    def parent_of(self, site: str) -> str | None:
        return self.parents.get(site)

    def children_of(self, site: str, server: str = "server") -> list[str]:
        """The children of ``site`` (the server's are the top-level sites)."""
        if site == server:
            return self.top_level
        return list(self._children.get(site, ()))

    @property
    def leaves(self) -> list[str]:
        """The sites with no children, in site order."""
        return [s for s in self.sites if s not in self._children]

    def depth(self) -> int:
        """How many levels of clients there are (1: no hierarchy)."""
        deepest = 1 if self.sites else 0
        for site in self.parents:
            d, node = 1, site
            while node in self.parents:
                node = self.parents[node]
                d += 1
            deepest = max(deepest, d)
        return deepest

    def describe(self) -> str | None:
        """For the console: ``"3 top-level, 2 levels"``; None when there is no hierarchy."""
        if not self.is_hierarchical:
            return None
        return f"{len(self._top)} top-level, {self.depth()} levels"

    def to_wire(self) -> dict[str, str]:
        return dict(self.parents)

    def __repr__(self) -> str:
        return f"Topology({len(self.sites)} sites, {self.describe() or 'flat'})"


def resolve(owner: str, num_clients: object, clients: Sequence[str] | None,
            parents: object, server: str = "server", names_arg: str = "clients") -> Topology:
    """The topology an environment's arguments describe: ``num_clients`` (an int or a shape),
    or ``clients=[names]`` (``names_arg``: what the environment calls it) with optional
    ``parents={child: parent}``."""
    if clients is None:
        if parents is not None:
            raise RecipeError(f"{owner}(parents=...) needs {names_arg}=[names] naming every site; or use "
                              f"num_clients=(3, 2) for 3 top-level sites with 2 children each")
        if num_clients is None:
            raise RecipeError(f"{owner} needs num_clients >= 1 (or clients=[names]), got None")
        return from_shape(num_clients, owner)
    if isinstance(clients, str):
        raise RecipeError(f"{owner} clients must be a list of names, e.g. ['site-a', 'site-b'], not a string")
    clients = list(clients)
    if not clients:
        raise RecipeError(f"{owner} clients=[] names no site")
    if len(set(clients)) != len(clients) or not all(isinstance(c, str) and c for c in clients):
        raise RecipeError(f"clients must be distinct non-empty names, got {clients}")
    if server in clients:
        raise RecipeError(f"{server!r} is the server's name; choose other client names")
    if num_clients is not None:
        if not _is_count(num_clients):
            raise RecipeError(f"{owner}: pass either num_clients=(shape) or {names_arg}=[names] with "
                              f"parents={{child: parent}}, not both")
        if num_clients != len(clients):
            raise RecipeError(f"num_clients={num_clients} but clients lists {len(clients)} names")
    return Topology(clients, check_parents(parents, clients, f"{owner} parents", server))


__all__ = ["Topology", "from_shape", "shape_of", "count_sites", "parse_shape", "check_parents", "resolve",
           "MAX_SITES", "MAX_DEPTH"]
