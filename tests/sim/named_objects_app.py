"""Module-level classes for tests/sim/test_named_objects.py (importable, so jobs can be exported)."""

from __future__ import annotations

from collab_core import CallValidationError, collab


class Metrics:
    def __init__(self, events=None):
        self.events = events if events is not None else []
        self.count = 0

    @collab.init
    def start(self):
        self.events.append(("init", "metrics"))

    @collab.publish
    def accept_metric(self, tag):
        self.count += 1
        self.events.append(("metric", collab.caller, tag))
        return self.count

    @collab.final
    def done(self):
        self.events.append(("final", "metrics"))

    def collab_export_args(self):
        return {}


class Audit:
    def __init__(self, events=None):
        self.events = events if events is not None else []

    @collab.init
    def start(self):
        self.events.append(("init", "audit"))

    @collab.publish
    def note(self, text):
        return text

    @collab.final
    def done(self):
        self.events.append(("final", "audit"))

    def collab_export_args(self):
        return {}


class Counter:
    def __init__(self):
        self.n = 0

    @collab.publish
    def bump(self):
        self.n += 1
        return self.n

    @collab.publish
    def hello(self):
        return "counter"


class Other:
    @collab.publish
    def hello(self):
        return "other"


class Client:
    @collab.publish
    def train(self, x):
        return [collab.server.metrics.accept_metric("q"), collab.server.accept_metric("u")]

    @collab.publish
    def ping(self):
        return "client"

    @collab.publish
    def call_peer(self, peer):
        return collab.clients[peer].counter.bump()


def _error(fn):
    try:
        fn()
    except CallValidationError as exc:
        return str(exc)
    return "no error"


class Server:
    def __init__(self, events=None, quick=False):
        self.events = events if events is not None else []
        self.quick = quick

    @collab.init
    def start(self):
        self.events.append(("init", "server"))

    @collab.main
    def run(self):
        if self.quick:
            return None
        out = {"train": {}}
        for site in ("site-1", "site-2"):  # one at a time: a deterministic report order
            out["train"][site] = collab.clients[site].train(1)
        out["bumps"] = [
            dict(collab.clients.counter.bump()),
            dict(collab.clients(target="counter").bump()),
            collab.clients["site-1"].counter.bump(),
            collab.clients["site-2"](target="counter").bump() - 2,
        ]
        out["main_wins"] = dict(collab.clients.ping())
        out["target_main"] = dict(collab.clients(target="client").ping())
        out["other"] = dict(collab.clients.other.hello())
        out["peer"] = collab.clients["site-1"].call_peer("site-2")
        out["ambiguous"] = _error(lambda: collab.clients.hello())
        out["unknown_target"] = _error(lambda: collab.clients(target="nope").bump())
        out["missing"] = _error(lambda: collab.clients.counter.missing())
        return out

    @collab.final
    def done(self):
        self.events.append(("final", "server"))

    def collab_export_args(self):
        return {}
