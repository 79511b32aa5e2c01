"""Groups, call options, events, thread limits and sync_task_timeout in SimEnv (issue 13: "Groups
and calls", "Events")."""

from __future__ import annotations

import json
import logging
import random
import sys
import textwrap
import threading
import time

import pytest

from collab_core import (
    CallValidationError,
    CollabCallError,
    CollabError,
    CollabRecipe,
    EventHandlerError,
    Group,
    Proxy,
    RecipeError,
    collab,
)
from collab_core.job import load_job, read_job_config, run_job_folder
from collab_sim import SimEnv

#: every wait in these tests is bounded by this (generous on a busy machine)
WAIT = 30.0


def run(server, client, n=3, env=None, **recipe):
    recipe = CollabRecipe(job_name="t", server=server, client=client, min_clients=recipe.pop("min_clients", 1),
                          **recipe)
    result = recipe.execute(env or SimEnv(num_clients=n, progress="off"))
    assert result.status == "finished", result.error
    return result


class Main:
    def __init__(self, fn):
        self.fn = fn

    @collab.main
    def run(self):
        return self.fn()


class Site:
    """Counts the calls it serves, per site (make_client_app gives each site its own lock)."""

    def __init__(self):
        self.calls: list[str] = []

    def make_client_app(self, site_name):
        return Site()

    @collab.publish
    def echo(self, x):
        self.calls.append("echo")
        return collab.site_name, x

    @collab.publish
    def served(self):
        return list(self.calls)

    @collab.publish
    def fail_on(self, site):
        if collab.site_name == site:
            raise ValueError(f"boom on {site}")
        return collab.site_name


# -- groups ------------------------------------------------------------------------------------------


def test_index_negative_index_and_slices():
    def main():
        c = collab.clients
        out = {"first": c[0].name, "last": c[-1].name, "second": c[1].name, "by_name": c["site-2"].name}
        part = c[1:3]
        out["slice_type"] = type(part).__name__
        out["slice"] = part.names
        out["step"] = c[::2].names
        out["slice_call"] = dict(part.echo("x"))
        out["served"] = dict(c.served())
        out["proxy_type"] = type(c[0]).__name__
        with pytest.raises(IndexError, match=r"site index 4 is out of range for a group of 4 site\(s\)"):
            c[4]
        with pytest.raises(IndexError, match="out of range"):
            c[-5]
        with pytest.raises(TypeError, match="index a group by site name, position or slice"):
            c[True]
        with pytest.raises(KeyError, match="no site 'site-9' in this group"):
            c["site-9"]
        # a slice keeps the group's options and can be configured further
        out["slice_of_configured"] = collab.clients(timeout=20)[2:].names
        out["nested"] = c[1:][1:][0].name
        return out

    out = run(Main(main), Site(), n=4).result
    assert out["first"] == "site-1" and out["last"] == "site-4" and out["second"] == "site-2"
    assert out["by_name"] == "site-2" and out["proxy_type"] == "Proxy"
    assert out["slice_type"] == "Group" and out["slice"] == ["site-2", "site-3"]
    assert out["step"] == ["site-1", "site-3"]
    assert out["slice_call"] == {"site-2": ("site-2", "x"), "site-3": ("site-3", "x")}
    # the slice's call went to its sites only
    assert out["served"] == {"site-1": [], "site-2": ["echo"], "site-3": ["echo"], "site-4": []}
    assert out["slice_of_configured"] == ["site-3", "site-4"]
    assert out["nested"] == "site-3"


def test_get_clients_gives_a_group_in_the_order_asked_and_clear_errors():
    def main():
        g = collab.get_clients(["site-3", "site-1"])
        out = {"type": type(g).__name__, "names": g.names, "res": [s for s, _ in g(blocking=False).echo(1)]}
        out["order"] = g.echo(2).sites
        out["one"] = collab.get_clients("site-2").names
        errors = {}
        for bad in (["site-1", "site-9", "nope"], [], ["site-1", "site-1"], [3]):
            with pytest.raises(CallValidationError) as info:
                collab.get_clients(bad)
            errors[repr(bad)] = str(info.value)
        out["errors"] = errors
        return out

    out = run(Main(main), Site()).result
    assert out["type"] == "Group" and out["names"] == ["site-3", "site-1"] and out["order"] == ["site-3", "site-1"]
    assert sorted(out["res"]) == ["site-1", "site-3"] and out["one"] == ["site-2"]
    err = out["errors"]
    unknown = err[repr(["site-1", "site-9", "nope"])]
    assert "'site-9', 'nope'" in unknown and "client sites are: site-1, site-2, site-3" in unknown
    assert "non-empty list of site names" in err["[]"] and "non-empty list" in err["[3]"]
    assert "'site-1' listed more than once" in err[repr(["site-1", "site-1"])]


def test_list_of_clients_gives_proxies_to_shuffle_sample_and_call_one_by_one():
    def main():
        proxies = list(collab.clients)
        random.Random(7).shuffle(proxies)
        order = [p.name for p in proxies]
        answers = [p.echo(i)[0] for i, p in enumerate(proxies)]
        sample = random.Random(3).sample(collab.clients, 2)
        g = collab.clients
        return {"types": sorted({type(p).__name__ for p in proxies}), "order": order, "answers": answers,
                "sample": [p.name for p in sample], "size": g.size, "len": len(g),
                "members": [p.name for p in g.members],
                "contains": ["site-2" in g, g[1] in g, "site-9" in g, "site-1" in g[1:]],
                "targets_from_group": collab.clients(targets=collab.clients[1:]).echo(0).sites,
                "targets_from_proxies": collab.clients(targets=[g[0], g[2]]).echo(0).sites}

    out = run(Main(main), Site(), n=4).result
    assert out["types"] == ["Proxy"]
    assert sorted(out["order"]) == ["site-1", "site-2", "site-3", "site-4"]
    assert out["answers"] == out["order"]  # each proxy called its own site, in the shuffled order
    assert len(set(out["sample"])) == 2 and set(out["sample"]) <= set(out["order"])
    assert out["size"] == out["len"] == 4 and out["members"] == ["site-1", "site-2", "site-3", "site-4"]
    assert out["contains"] == [True, True, False, False]
    assert out["targets_from_group"] == ["site-2", "site-3", "site-4"]
    assert out["targets_from_proxies"] == ["site-1", "site-3"]


def test_len_of_a_non_blocking_result_counts_the_successes_received():
    def main():
        res = collab.clients(blocking=False).echo(1)
        seen = [len(res)]
        for _ in res:
            seen.append(len(res))
        failing = collab.clients(blocking=False, min_responses=0).fail_on("site-2")
        for _ in failing:
            pass
        return {"seen": seen, "final": len(res), "done": len(res.result()), "targets": res.targets,
                "failing": len(failing), "failures": sorted(failing.failures)}

    out = run(Main(main), Site()).result
    assert out["seen"] == [0, 1, 2, 3]  # as NVFlare's live result queue: results received so far
    assert out["final"] == out["done"] == 3 and out["targets"] == ["site-1", "site-2", "site-3"]
    assert out["failing"] == 2 and out["failures"] == ["site-2"]


# -- call options ------------------------------------------------------------------------------------


class Partial:
    """site-1 publishes ``extra``, the other sites do not (a client object per site)."""

    def make_client_app(self, site_name):
        return PartialWithExtra() if site_name == "site-1" else Partial()

    @collab.publish
    def echo(self, x):
        return collab.site_name, x


class PartialWithExtra(Partial):
    @collab.publish
    def extra(self, x):
        return f"extra {x} on {collab.site_name}"


def test_optional_call_of_an_unpublished_method_is_not_an_error():
    cb_sites = []

    def cb(site, value):
        cb_sites.append(site)
        return value

    def main():
        out = {"single": collab.clients[1](optional=True).nothing(1)}
        fut = collab.clients[1](optional=True, blocking=False).nothing(1)
        out["future"] = fut.result(timeout=WAIT)
        out["fire_and_forget"] = collab.clients[1](optional=True, expect_result=False).nothing(1)
        res = collab.clients(optional=True, process_resp_cb=cb).nothing(1, 2)
        out["group"] = list(res)
        out["group_failures"] = res.failures
        out["group_nb"] = sorted(collab.clients(optional=True, blocking=False).nothing())
        out["group_ff"] = collab.clients(optional=True, expect_result=False).nothing()
        # sites differ: site-1 publishes extra (the caller knows site-1's interface), the others
        # answer None at the site itself
        out["mixed"] = dict(collab.clients(optional=True).extra(5))
        with pytest.raises(CallValidationError, match="publishes no method 'nothing'"):
            collab.clients[1].nothing(1)
        with pytest.raises(CallValidationError, match="bad arguments for echo"):
            collab.clients[1](optional=True).echo(1, 2, 3)  # a published method: its arguments still count
        mixed_strict = collab.clients(min_responses=0).extra(5)
        out["strict_failures"] = sorted(mixed_strict.failures)
        return out

    out = run(Main(main), Partial()).result
    assert out["single"] is None and out["future"] is None and out["fire_and_forget"] is None
    assert out["group"] == [("site-1", None), ("site-2", None), ("site-3", None)] and out["group_failures"] == {}
    assert out["group_nb"] == [("site-1", None), ("site-2", None), ("site-3", None)] and out["group_ff"] is None
    assert cb_sites == []  # nothing answered: no callback
    assert out["mixed"] == {"site-1": "extra 5 on site-1", "site-2": None, "site-3": None}
    assert out["strict_failures"] == ["site-2", "site-3"]


def test_secure_is_accepted_and_options_are_validated():
    def main():
        out = {"group": dict(collab.clients(secure=True).echo(1)), "single": collab.clients[0](secure=True).echo(2)}
        for bad in ({"secure": "yes"}, {"secure": 1}, {"optional": None}, {"optional": "true"}):
            with pytest.raises(TypeError, match=f"call option {next(iter(bad))} must be True or False"):
                collab.clients(**bad)
        with pytest.raises(TypeError, match="unknown call option.*acc.*need process_resp_cb"):
            collab.clients(acc=[])
        return out

    out = run(Main(main), Site(), n=2).result
    assert out["group"] == {"site-1": ("site-1", 1), "site-2": ("site-2", 1)} and out["single"] == ("site-1", 2)


def test_process_resp_cb_gets_extra_keyword_arguments_and_the_answering_site_as_caller():
    seen = []

    class Totals:
        def __init__(self):
            self.total = 0

    def accept(site, value, totals, scale, context):
        seen.append((site, collab.caller, context.caller, context.callee, collab.site_name, threading.get_ident()))
        totals.total += value[1] * scale
        return value[1] * scale

    def plain(site, value, tag):
        return f"{tag}:{site}:{value[1]}"

    def main():
        totals = Totals()
        res = collab.clients(process_resp_cb=accept, totals=totals, scale=10).echo(2)
        single = collab.clients["site-2"](process_resp_cb=plain, tag="one").echo(5)
        # kwargs added in a second options call keep the first ones
        chained = collab.clients(process_resp_cb=plain)(tag="two").echo(1)
        return {"values": dict(res), "total": totals.total, "single": single, "chained": dict(chained),
                "main_thread": threading.get_ident(), "after": collab.caller}

    out = run(Main(main), Site()).result
    assert out["values"] == {"site-1": 20, "site-2": 20, "site-3": 20} and out["total"] == 60
    assert out["single"] == "one:site-2:5"
    assert out["chained"] == {f"site-{i}": f"two:site-{i}:1" for i in (1, 2, 3)}
    assert sorted(s[:5] for s in seen) == [(f"site-{i}", f"site-{i}", f"site-{i}", "server", "server")
                                           for i in (1, 2, 3)]
    assert {s[5] for s in seen} == {out["main_thread"]}  # on the caller's thread
    assert out["after"] == "server"  # main's own context is back after the callbacks


# -- events ------------------------------------------------------------------------------------------


class Listener:
    def __init__(self):
        self.got = []

    def make_client_app(self, site_name):
        return Listener()

    @collab.init
    def setup(self):
        collab.register_event_handler("final_model", self.accept, note="first")
        collab.register_event_handler("final_model", self.save)
        collab.register_event_handler("bad", self.explode)
        collab.register_event_handler("bad", self.save)

    def accept(self, event_type, data, note, context):
        self.got.append(("accept", event_type, data, note, context.caller, collab.caller))
        return f"accepted on {collab.site_name}"

    def save(self, event_type, data):
        self.got.append(("save", event_type, data))
        return "saved"

    def explode(self, event_type, data):
        if collab.site_name == "site-2":
            raise RuntimeError("handler broke")
        return "fine"

    @collab.publish
    def got_events(self):
        return self.got

    @collab.publish
    def notify_server(self, x):
        collab.server(expect_result=False).fire_event("metrics", {"site": collab.site_name, "x": x})
        return collab.server.fire_event("metrics", {"site": collab.site_name, "x": -x})

    @collab.publish
    def fire_here(self):
        return collab.fire_event("final_model", "local")


class EventServer:
    def __init__(self):
        self.metrics = []
        self.lock = threading.Lock()

    def __deepcopy__(self, memo):
        return self

    @collab.init
    def setup(self):
        collab.register_event_handler("metrics", self.on_metrics)

    def on_metrics(self, event_type, data):
        with self.lock:
            self.metrics.append((collab.caller, data["site"], data["x"]))
        return "ok"

    @collab.main
    def run(self):
        out = {"remote": dict(collab.clients.fire_event("final_model", [1, 2]))}
        out["got"] = dict(collab.clients.got_events())
        out["notified"] = dict(collab.clients.notify_server(7))
        deadline = time.monotonic() + WAIT
        while len(self.metrics) < 6 and time.monotonic() < deadline:  # fire-and-forget: bounded wait
            time.sleep(0.01)
        with self.lock:
            out["metrics"] = sorted(self.metrics)
        out["local_on_site"] = collab.clients["site-3"].fire_here()
        bad = collab.clients(min_responses=0).fire_event("bad", 0)
        out["bad_ok"] = dict(bad)
        out["bad_failures"] = {s: str(e) for s, e in bad.failures.items()}
        out["bad_ff"] = collab.clients(expect_result=False).fire_event("bad", 1)
        out["nobody"] = dict(collab.clients.fire_event("unheard", None))
        order = []
        collab.register_event_handler("mine", lambda et, d: order.append(("lambda", d)) or "l")
        collab.register_event_handler("mine", self.twice, tag="a")
        collab.register_event_handler("mine", self.twice, tag="b")
        out["local"] = collab.fire_event("mine", 3)
        out["order"] = order
        out["none_local"] = collab.fire_event("nothing-registered")
        with pytest.raises(CallValidationError, match="event_type must be a non-empty string"):
            collab.clients.fire_event("", 1)
        with pytest.raises(CallValidationError, match="bad arguments for fire_event"):
            collab.clients.fire_event("x", 1, 2)
        with pytest.raises(TypeError, match="handler must be callable"):
            collab.register_event_handler("x", "not callable")
        with pytest.raises(TypeError, match="event_type must be a non-empty string"):
            collab.register_event_handler(None, self.twice)
        collab.register_event_handler("boom", self.boom)
        collab.register_event_handler("boom", self.twice, tag="after")
        with pytest.raises(EventHandlerError) as info:
            collab.fire_event("boom", 9)
        out["boom"] = [str(info.value), sorted(info.value.failures), info.value.results]
        return out

    def twice(self, event_type, data, tag):
        return f"{tag}{data}"

    def boom(self, event_type, data):
        raise KeyError("lost")


def test_events_local_and_remote_in_registration_order():
    result = run(EventServer(), Listener())
    out = result.result
    assert out["remote"] == {f"site-{i}": {"Listener.accept": f"accepted on site-{i}", "Listener.save": "saved"}
                             for i in (1, 2, 3)}
    for i in (1, 2, 3):  # registration order; the firing site is the handler's caller
        assert out["got"][f"site-{i}"] == [("accept", "final_model", [1, 2], "first", "server", "server"),
                                          ("save", "final_model", [1, 2])]
    # client -> server, fire-and-forget and with a result
    assert out["notified"] == {f"site-{i}": {"EventServer.on_metrics": "ok"} for i in (1, 2, 3)}
    assert out["metrics"] == sorted([(f"site-{i}", f"site-{i}", x) for i in (1, 2, 3) for x in (7, -7)])
    # a site fires to its own handlers; the site itself is the caller there
    assert out["local_on_site"] == {"Listener.accept": "accepted on site-3", "Listener.save": "saved"}
    # a failing handler: that site's call fails, the other handler there still ran, other sites fine
    assert out["bad_ok"] == {"site-1": {"Listener.explode": "fine", "Listener.save": "saved"},
                             "site-3": {"Listener.explode": "fine", "Listener.save": "saved"}}
    err = out["bad_failures"]["site-2"]
    assert "EventHandlerError" in err and "handler(s) of event 'bad' failed on site-2" in err
    assert "Listener.explode: RuntimeError: handler broke" in err
    assert out["bad_ff"] is None and out["nobody"] == {f"site-{i}": {} for i in (1, 2, 3)}
    # local: results by qualified name, a second registration of the same function numbered
    assert out["local"] == {"EventServer.run.<locals>.<lambda>": "l", "EventServer.twice": "a3",
                            "EventServer.twice#2": "b3"}
    assert out["order"] == [("lambda", 3)] and out["none_local"] == {}
    text, failed, rest = out["boom"]
    assert failed == ["EventServer.boom"] and rest == {"EventServer.twice": "after9"}
    assert "1 handler(s) of event 'boom' failed on server: EventServer.boom: KeyError" in text
    # the failures are logged on their site with the event type and the handler, with the traceback
    site2 = result.logs["site-2"].read_text()
    assert "event 'bad': handler Listener.explode failed on site-2 (fired by server)" in site2
    assert "RuntimeError: handler broke" in site2
    server_log = result.logs["server"].read_text()
    assert "event 'boom': handler EventServer.boom failed on server" in server_log


def test_event_functions_need_a_job_and_fire_event_is_reserved():
    with pytest.raises(CollabError, match="needs a running collab job"):
        collab.fire_event("x", 1)
    with pytest.raises(CollabError, match="needs a running collab job"):
        collab.register_event_handler("x", print)

    class Clash:
        @collab.publish
        def fire_event(self, event_type, data):
            return "mine"

    def main():
        with pytest.raises(CallValidationError, match="publishes its own method 'fire_event'.*rename"):
            collab.clients.fire_event("x", 1)
        return "checked"

    assert run(Main(main), Clash(), n=1).result == "checked"


# -- thread limits and sync_task_timeout -------------------------------------------------------------


class Busy:
    """Counts how many of its calls run at once; each call waits (bounded) until ``want`` run."""

    def __init__(self):
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def make_client_app(self, site_name):
        return Busy()

    def __deepcopy__(self, memo):
        return self

    def _work(self, want):
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        deadline = time.monotonic() + 5.0  # long enough for `want` calls to overlap on a busy machine
        while time.monotonic() < deadline:
            with self.lock:
                if self.now >= want:
                    break
            time.sleep(0.005)
        time.sleep(0.02)
        with self.lock:
            self.now -= 1
        return self.peak

    @collab.publish
    def work(self, want):
        return self._work(want)

    @collab.publish
    def hammer_server(self, calls, want):
        futures = [collab.server(blocking=False).report(want) for _ in range(calls)]
        return max(f.result(timeout=WAIT) for f in futures)


class BusyServer(Busy):
    def __init__(self, calls, want):
        super().__init__()
        self.calls, self.want = calls, want

    @collab.publish
    def report(self, want):
        return self._work(want)

    @collab.main
    def run(self):
        futures = [collab.clients["site-1"](blocking=False).work(self.want) for _ in range(self.calls)]
        site_peak = max(f.result(timeout=WAIT) for f in futures)
        server_peak = max(v for _, v in collab.clients.hammer_server(2, self.want))
        return {"site": site_peak, "server": server_peak}


@pytest.mark.parametrize("limit", [1, 2, 4])
def test_max_call_threads_bound_the_calls_a_site_serves_at_once(limit):
    # 6 calls to one client and 6 to the server (3 clients x 2); each waits until `limit` overlap
    out = run(BusyServer(calls=6, want=limit), Busy(), max_call_threads_for_client=limit,
              max_call_threads_for_server=limit).result
    assert out == {"site": limit, "server": limit}


def test_without_limits_more_calls_overlap():
    # the control: the same load with no limit lets more than 2 run at once
    out = run(BusyServer(calls=6, want=3), Busy()).result
    assert out["site"] >= 3 and out["server"] >= 3


def test_a_call_waiting_for_a_call_thread_gives_up_at_its_timeout():
    class Slow:
        @collab.publish
        def hold(self, seconds):
            end = time.monotonic() + seconds
            while time.monotonic() < end and not collab.is_aborted:
                time.sleep(0.01)
            return "held"

    def main():
        first = collab.clients["site-1"](blocking=False).hold(3.0)
        with pytest.raises(CollabCallError, match="timeout"):
            collab.clients["site-1"](timeout=0.5).hold(0)
        return first.result(timeout=WAIT)

    assert run(Main(main), Slow(), n=1, max_call_threads_for_client=1).result == "held"


RELEASE = threading.Event()


class SlowInit:
    def make_client_app(self, site_name):
        return SlowInit()

    @collab.init
    def setup(self):
        if collab.site_name == "site-2":
            RELEASE.wait(WAIT * 2)  # main releases it once the job went on without this site

    @collab.publish
    def echo(self, x):
        return x


def test_sync_task_timeout_bounds_the_clients_init_phase_in_simenv():
    RELEASE.clear()

    def main():
        try:
            res = collab.clients(min_responses=0).echo(1)
            return {"ok": res.sites, "failed": {s: str(e) for s, e in res.failures.items()}}
        finally:
            RELEASE.set()

    result = run(Main(main), SlowInit(), n=3, min_clients=2, sync_task_timeout=3)
    out = result.result
    assert out["ok"] == ["site-1", "site-3"]
    assert "@collab.init did not finish within the recipe's sync_task_timeout=3 s" in out["failed"]["site-2"]
    assert "sync_task_timeout=3 s" in result.logs["server"].read_text()


def test_sync_task_timeout_too_few_sites_fails_the_job():
    RELEASE.clear()
    recipe = CollabRecipe(job_name="t", server=Main(lambda: "ran"), client=SlowInit(), min_clients=3,
                          sync_task_timeout=1.5)
    try:
        result = recipe.execute(SimEnv(num_clients=3, progress="off"))
    finally:
        RELEASE.set()
    assert result.status == "failed"
    assert "only 2 of 3 clients started" in result.error and "sync_task_timeout=1.5 s" in result.error


@pytest.mark.parametrize(("option", "value", "message"), [
    ("sync_task_timeout", 0, "sync_task_timeout must be a positive number"),
    ("sync_task_timeout", "60", "sync_task_timeout must be a positive number"),
    ("sync_task_timeout", float("nan"), "sync_task_timeout must be a positive number"),
    ("max_call_threads_for_server", 0, "max_call_threads_for_server must be an integer >= 1"),
    ("max_call_threads_for_client", 2.5, "max_call_threads_for_client must be an integer >= 1"),
    ("max_call_threads_for_client", True, "max_call_threads_for_client must be an integer >= 1"),
])
def test_recipe_settings_are_validated(option, value, message):
    with pytest.raises(RecipeError, match=message):
        CollabRecipe(job_name="t", server=Main(lambda: 1), client=Site(), **{option: value})


PROJECT = """
import threading, time
from collab_core import collab

class Busy:
    def __init__(self):
        self.lock = threading.Lock()
        self.now = self.peak = 0

    def make_client_app(self, site_name):
        return Busy()

    def collab_export_args(self):
        return {}

    @collab.publish
    def work(self, want):
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and self.now < want:
            time.sleep(0.005)
        time.sleep(0.02)
        with self.lock:
            self.now -= 1
        return self.peak

class Server:
    def __init__(self, want):
        self.want = want

    @collab.main
    def run(self):
        futures = [collab.clients["site-1"](blocking=False).work(self.want) for _ in range(5)]
        return max(f.result(timeout=30) for f in futures)
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "busy_project.py").write_text(textwrap.dedent(PROJECT))
    monkeypatch.syspath_prepend(str(tmp_path))
    import busy_project

    yield busy_project
    sys.modules.pop("busy_project", None)


def test_settings_travel_in_job_json_and_collab_run_honours_them(tmp_path, project):
    recipe = CollabRecipe(job_name="busy", server=project.Server(want=2), client=project.Busy(),
                          sync_task_timeout=45, max_call_threads_for_server=3, max_call_threads_for_client=2)
    job = recipe.export(tmp_path / "job")
    config = json.loads((job / "job.json").read_text())
    assert (config["sync_task_timeout"], config["max_call_threads_for_server"],
            config["max_call_threads_for_client"]) == (45.0, 3, 2)
    rebuilt = load_job(job)
    assert (rebuilt.sync_task_timeout, rebuilt.max_call_threads_for_server,
            rebuilt.max_call_threads_for_client) == (45.0, 3, 2)
    run_ = run_job_folder(job, env="sim", num_clients=2, workspace=tmp_path / "ws", progress="off")
    assert run_.status == "finished", run_.error
    assert run_.result == 2  # the exported limit held: two of the five calls at once
    # a job without them has no such keys (as before)
    plain = CollabRecipe(job_name="plain", server=project.Server(want=1), client=project.Busy()).export(tmp_path / "p")
    assert not {"sync_task_timeout", "max_call_threads_for_server", "max_call_threads_for_client"} & set(
        json.loads((plain / "job.json").read_text()))


@pytest.mark.parametrize(("key", "value"), [
    ("sync_task_timeout", -1), ("sync_task_timeout", "1"), ("sync_task_timeout", True),
    ("max_call_threads_for_server", "8"), ("max_call_threads_for_client", 0),
    ("max_call_threads_for_client", [2]),
])
def test_job_json_settings_are_checked_as_hostile_input(tmp_path, project, key, value):
    job = CollabRecipe(job_name="busy", server=project.Server(want=1), client=project.Busy()).export(tmp_path / "j")
    config = json.loads((job / "job.json").read_text())
    config[key] = value
    (job / "job.json").write_text(json.dumps(config))
    with pytest.raises(RecipeError, match=f"job.json: {key} must be"):
        read_job_config(job)


def test_simple_logging_shows_site_records(capsys):
    from collab_core import simple_logging

    root = logging.getLogger()
    before = list(root.handlers), root.level
    try:
        simple_logging()

        class Talk:
            @collab.publish
            def talk(self):
                logging.getLogger("user.code").info("hello from %s", collab.site_name)
                return 1

        run(Main(lambda: sum(v for _, v in collab.clients.talk())), Talk(), n=2)
    finally:
        for h in list(root.handlers):
            if h not in before[0]:
                root.removeHandler(h)
        root.setLevel(before[1])
    err = capsys.readouterr().err
    assert "INFO [site-1] user.code: hello from site-1" in err
    assert "INFO [site-2] user.code: hello from site-2" in err


def test_group_and_proxy_types_are_exported():
    assert isinstance(Group(["a", "b"])[0], Proxy) and isinstance(Group(["a", "b"])[0:1], Group)
