"""The Collab API in SimEnv: calls, options, errors, groups, nesting, isolation, lifecycle."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from collab_core import (
    CallValidationError,
    CollabCallError,
    CollabError,
    CollabRecipe,
    GroupCallError,
    RecipeError,
    collab,
)
from collab_sim import SimEnv


def run(server, client, n=3, **env):
    recipe = CollabRecipe(job_name="t", server=server, client=client, min_clients=1)
    result = recipe.execute(SimEnv(num_clients=n, **env))
    assert result.status == "finished", result.error
    return result.result


class Echo:
    def __init__(self):
        self.calls = 0

    @collab.publish
    def echo(self, x, scale=1):
        self.calls += 1
        return collab.site_name, x * scale

    @collab.publish
    def fail_on(self, site):
        if collab.site_name == site:
            raise ValueError(f"boom on {site}")
        return collab.site_name

    @collab.publish
    def sleep(self, seconds_by_site):
        seconds = seconds_by_site.get(collab.site_name, 0)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if collab.is_aborted:
                return "aborted"
            time.sleep(0.005)
        return collab.site_name


class Main:
    def __init__(self, fn):
        self.fn = fn

    @collab.main
    def run(self):
        return self.fn()


def test_group_call_returns_pairs_and_dict():
    def main():
        res = collab.clients.echo(2, scale=3)
        assert len(res) == 3 and res.failures == {}
        assert sorted(res.sites) == ["site-1", "site-2", "site-3"]
        return dict(res)

    out = run(Main(main), Echo())
    assert out == {f"site-{i}": (f"site-{i}", 6) for i in (1, 2, 3)}


def test_single_call_and_site_indexing():
    def main():
        return collab.clients["site-2"].echo("a", scale=2)

    assert run(Main(main), Echo()) == ("site-2", "aa")


def test_bad_arguments_fail_at_caller_with_signature_before_sending():
    client = Echo()

    def main():
        with pytest.raises(CallValidationError, match=r"echo\(x, scale=1\).*unexpected keyword argument 'y'"):
            collab.clients.echo(1, y=2)
        with pytest.raises(CallValidationError, match=r"missing a required argument: 'x'"):
            collab.clients["site-1"].echo()
        with pytest.raises(CallValidationError, match=r"publishes no method 'ecko'.*echo\(x, scale=1\)"):
            collab.clients.ecko(1)
        with pytest.raises(CallValidationError, match="no site named 'site-9'"):
            collab.clients["site-1"].__class__("site-9").echo(1)
        return "ok"

    recipe = CollabRecipe(job_name="t", server=Main(main), client=client)
    r = recipe.execute(SimEnv(num_clients=2, isolation="none"))
    assert r.status == "finished", r.error
    assert client.calls == 0  # the per-site copies were never called either (nothing sent)


def test_failure_raises_group_error_naming_site_and_traceback():
    def main():
        try:
            collab.clients.fail_on("site-2")
        except GroupCallError as exc:
            return exc
        raise AssertionError("no error")

    exc = run(Main(main), Echo(), isolation="none")
    assert "site-2" in exc.failures
    assert "site-2" in str(exc) and "boom on site-2" in str(exc)
    assert "fail_on" in exc.failures["site-2"].remote_traceback
    assert exc.failures["site-2"].cause.type_name == "ValueError"
    # the quorum (all 3) was lost with site-2: sites not done by then are cancelled, not waited on
    for site in ("site-1", "site-3"):
        assert site in exc.sites_ok or "cancelled" in str(exc.failures[site].cause)


def test_min_responses_lets_main_go_on_with_failures():
    def main():
        res = collab.clients(min_responses=2).fail_on("site-1")
        return sorted(res.sites), {s: type(e).__name__ for s, e in res.failures.items()}

    sites, failures = run(Main(main), Echo())
    assert sites == ["site-2", "site-3"]
    assert failures == {"site-1": "CollabCallError"}


def test_single_call_failure_raises_collab_call_error():
    def main():
        with pytest.raises(CollabCallError) as err:
            collab.clients["site-1"].fail_on("site-1")
        assert err.value.site == "site-1" and err.value.method == "fail_on"
        assert "boom on site-1" in str(err.value)
        assert "Traceback" in err.value.remote_traceback
        return "ok"

    assert run(Main(main), Echo()) == "ok"


def test_timeout_is_a_deadline_on_the_whole_group_and_cancels_at_the_site():
    seen = {}

    class Slow(Echo):
        @collab.publish
        def slow(self):
            t0 = time.monotonic()
            while not collab.is_aborted and time.monotonic() - t0 < 10:
                time.sleep(0.005)
            seen[collab.site_name] = collab.is_aborted

    def main():
        t0 = time.monotonic()
        res = collab.clients(timeout=0.3, min_responses=0).slow()
        elapsed = time.monotonic() - t0
        return elapsed, {s: str(e.cause) for s, e in res.failures.items()}

    elapsed, failures = run(Main(main), Slow())
    assert 0.25 < elapsed < 2.0
    assert set(failures) == {"site-1", "site-2", "site-3"}
    assert all("timeout" in f for f in failures.values())
    assert seen == {"site-1": True, "site-2": True, "site-3": True}


def test_single_call_timeout_raises():
    def main():
        t0 = time.monotonic()
        with pytest.raises(CollabCallError) as err:
            collab.clients["site-1"](timeout=0.2).sleep({"site-1": 5})
        assert isinstance(err.value.cause, TimeoutError)
        return time.monotonic() - t0

    assert run(Main(main), Echo()) < 2.0


@pytest.mark.parametrize("max_workers", [None, 1])
def test_group_fails_fast_when_quorum_is_impossible(max_workers):
    # With max_workers=1 the one worker has started site-1 by the time main iterates, so main's
    # own thread runs site-2's call (a caller helps with calls no worker has started): site-1's
    # failure must still cancel site-2 and site-3 although main is busy inside one of them.
    seen = {}

    def main():
        calls = collab.clients(blocking=False).fail_or_sleep()
        time.sleep(0.3)
        with pytest.raises(GroupCallError) as err:
            for _ in calls:
                pass
        return sorted(err.value.failures)

    class C(Echo):
        @collab.publish
        def fail_or_sleep(self):
            if collab.site_name == "site-1":
                time.sleep(1.0)
                raise RuntimeError("down")
            give_up = time.monotonic() + 60
            while not collab.is_aborted and time.monotonic() < give_up:
                time.sleep(0.005)
            seen[collab.site_name] = collab.is_aborted

    assert run(Main(main), C(), max_workers=max_workers) == ["site-1", "site-2", "site-3"]
    # the sites that started saw the cancellation (none waited out its 60 s)
    assert seen and all(seen.values()), seen


def test_non_blocking_yields_results_as_they_arrive():
    def main():
        it = collab.clients(blocking=False).sleep({"site-1": 0.4, "site-2": 0.0, "site-3": 0.2})
        return [site for site, _ in it]

    assert run(Main(main), Echo()) == ["site-2", "site-3", "site-1"]


def test_non_blocking_raises_at_the_end_when_quorum_missed():
    def main():
        got = []
        with pytest.raises(GroupCallError):
            for site, _ in collab.clients(blocking=False).fail_on("site-3"):
                got.append(site)
        return sorted(got)

    assert run(Main(main), Echo()) == ["site-1", "site-2"]


def test_expect_result_false_is_fire_and_forget():
    hits = []
    done = threading.Event()

    class C(Echo):
        @collab.publish
        def ping(self, x):
            hits.append((collab.site_name, x))
            if len(hits) == 3:
                done.set()

    def main():
        assert collab.clients(expect_result=False).ping(7) is None
        assert done.wait(5)
        collab.clients["site-3"](expect_result=False).ping(8)
        return "ok"

    run(Main(main), C(), isolation="none")
    assert sorted(hits)[:3] == [("site-1", 7), ("site-2", 7), ("site-3", 7)]


def test_parallel_bounds_calls_in_flight():
    lock = threading.Lock()
    state = {"now": 0, "max": 0}

    class C(Echo):
        @collab.publish
        def work(self):
            with lock:
                state["now"] += 1
                state["max"] = max(state["max"], state["now"])
            time.sleep(0.03)
            with lock:
                state["now"] -= 1
            return 1

    def main():
        return len(collab.clients(parallel=2).work())

    assert run(Main(main), C(), n=6) == 6
    assert state["max"] == 2


def test_targets_option():
    def main():
        res = collab.clients(targets=["site-1", "site-3"]).echo(1)
        with pytest.raises(CallValidationError, match="not in this group"):
            collab.clients(targets=["site-7"]).echo(1)
        return sorted(res.sites)

    assert run(Main(main), Echo()) == ["site-1", "site-3"]


def test_process_resp_cb_runs_on_the_callers_thread_and_replaces_values():
    threads = set()

    def cb(site, value):
        threads.add(threading.get_ident())
        return value[1] + 100

    def main():
        res = collab.clients(process_resp_cb=cb).echo(1)
        return sorted(v for _, v in res), threading.get_ident()

    values, main_thread = run(Main(main), Echo())
    assert values == [101, 101, 101]
    assert threads == {main_thread}


def test_bad_options_are_clear_errors():
    def main():
        with pytest.raises(ValueError, match="timeout must be a positive"):
            collab.clients(timeout=-1)
        with pytest.raises(TypeError, match="unknown call option.*timout"):
            collab.clients(timout=3)
        with pytest.raises(CallValidationError, match="min_responses=5 but the call has only 3"):
            collab.clients(min_responses=5).echo(1)
        return "ok"

    assert run(Main(main), Echo()) == "ok"


def test_main_runs_in_callers_thread_and_sites_see_their_own_names():
    caller = threading.get_ident()

    def main():
        assert collab.site_name == "server"
        assert threading.get_ident() == caller
        assert collab.workspace.name == "server" and collab.workspace.is_dir()
        res = dict(collab.clients.whoami())
        return res

    class C:
        @collab.publish
        def whoami(self):
            return collab.site_name, collab.workspace.name, collab.workspace.is_dir()

    out = run(Main(main), C(), n=4)
    assert out == {f"site-{i}": (f"site-{i}", f"site-{i}", True) for i in range(1, 5)}


def test_client_calls_server_and_peers():
    class Server:
        def __init__(self):
            self.reports = []

        @collab.publish
        def report(self, value):
            self.reports.append((collab.site_name, value))
            return len(value)

        @collab.main
        def run(self):
            collab.clients.start()
            return sorted(self.reports)

    class C:
        @collab.publish
        def start(self):
            n = collab.server.report(collab.site_name)
            peers = collab.other_clients.hello(collab.site_name)
            assert collab.site_name not in peers.sites
            return n, sorted(peers.sites)

        @collab.publish
        def hello(self, sender):
            return f"{collab.site_name} greets {sender}"

    assert run(Server(), C(), n=3) == [("server", "site-1"), ("server", "site-2"), ("server", "site-3")]


def test_nested_calls_do_not_deadlock_with_a_tiny_pool():
    # swarm: every client's published method calls every peer, with only 2 worker threads
    class C:
        @collab.publish
        def aggregate(self, depth):
            if depth == 0:
                return 1
            return 1 + sum(v for _, v in collab.other_clients.aggregate(depth - 1))

    def main():
        return sorted(v for _, v in collab.clients(timeout=60).aggregate(2))

    # depth 2 with 6 clients: 1 + 5 * (1 + 5 * 1) = 31
    assert run(Main(main), C(), n=6, max_workers=2) == [31] * 6


def test_isolation_copies_arguments_and_results():
    weights = np.zeros(4, dtype=np.float32)

    class C:
        @collab.publish
        def mutate(self, w):
            w += 1
            return w

    def main():
        res = collab.clients.mutate(weights)
        return [v for _, v in res]

    out = run(Main(main), C(), n=2)
    assert np.all(weights == 0)
    assert all(np.all(v == 1) for v in out)
    assert out[0] is not out[1]


def test_isolation_none_passes_references():
    weights = np.zeros(4, dtype=np.float32)

    class C:
        @collab.publish
        def mutate(self, w):
            w += 1
            return w

    def main():
        return [v for _, v in collab.clients.mutate(weights)]

    out = run(Main(main), C(), n=2, isolation="none")
    assert np.all(weights == 2)
    assert out[0] is weights


def test_isolation_rejects_what_the_network_could_not_carry():
    class Opaque:
        pass

    def main():
        with pytest.raises(CollabCallError, match="Opaque"):
            collab.clients.echo(Opaque())
        with pytest.raises(CollabCallError, match="cannot be sent"):
            collab.clients["site-1"].give()
        return "ok"

    class C(Echo):
        @collab.publish
        def give(self):
            return Opaque()

    assert run(Main(main), C()) == "ok"


def test_each_site_gets_its_own_client_object():
    class Counter:
        def __init__(self):
            self.n = 0

        @collab.publish
        def bump(self):
            self.n += 1
            return self.n, id(self)

    def main():
        collab.clients.bump()
        res = dict(collab.clients.bump())
        return res

    out = run(Main(main), Counter(), n=3)
    assert [n for n, _ in out.values()] == [2, 2, 2]
    assert len({i for _, i in out.values()}) == 3


def test_make_client_app_is_used():
    class Factory:
        def __init__(self, site=None):
            self.site = site

        def make_client_app(self, site_name):
            return Factory(site_name)

        @collab.publish
        def who(self):
            return self.site

    def main():
        return dict(collab.clients.who())

    assert run(Main(main), Factory(), n=2) == {"site-1": "site-1", "site-2": "site-2"}


def test_lifecycle_order_and_final_runs_when_main_fails():
    events = []
    lock = threading.Lock()

    class Server:
        @collab.init
        def a(self):
            events.append("server-init-a")

        @collab.init
        def b(self):
            events.append("server-init-b")

        @collab.main
        def run(self):
            events.append("main")
            raise RuntimeError("main broke")

        @collab.final
        def z(self):
            events.append("server-final")

    class C:
        @collab.init
        def setup(self):
            with lock:
                events.append(f"init-{collab.site_name}")

        @collab.publish
        def noop(self):
            pass

        @collab.final
        def teardown(self):
            with lock:
                events.append(f"final-{collab.site_name}")

    r = CollabRecipe(job_name="life", server=Server(), client=C()).execute(SimEnv(num_clients=2))
    assert r.status == "failed"
    assert "main broke" in r.error and "RuntimeError" in r.error
    assert r.result is None
    assert events[:2] == sorted(events[:2]) and set(events[:2]) == {"init-site-1", "init-site-2"}
    assert events[2:6] == ["server-init-a", "server-init-b", "main", "server-final"]
    assert set(events[6:]) == {"final-site-1", "final-site-2"}
    assert "main broke" in r.log("server")
    with pytest.raises(CollabError, match="failed"):
        r.raise_for_status()


def test_client_init_failure_counts_against_min_clients():
    class C:
        @collab.init
        def setup(self):
            if collab.site_name == "site-2":
                raise OSError("no data here")

        @collab.publish
        def f(self):
            return 1

    def main():
        res = collab.clients(min_responses=2).f()
        return sorted(res.sites), list(res.failures)

    ok = CollabRecipe(job_name="t", server=Main(main), client=C(), min_clients=2).execute(SimEnv(num_clients=3))
    assert ok.status == "finished" and ok.result == (["site-1", "site-3"], ["site-2"])
    bad = CollabRecipe(job_name="t", server=Main(main), client=C(), min_clients=3).execute(SimEnv(num_clients=3))
    assert bad.status == "failed" and "only 2 of 3 clients started" in bad.error


def test_min_clients_is_enforced_before_anything_runs():
    ran = []

    def main():
        ran.append(1)

    recipe = CollabRecipe(job_name="t", server=Main(main), client=Echo(), min_clients=5)
    with pytest.raises(RecipeError, match="min_clients=5 but SimEnv has 3"):
        recipe.execute(SimEnv(num_clients=3))
    assert ran == []


def test_run_workspace_and_logs(tmp_path):
    import logging

    class C:
        @collab.publish
        def f(self):
            logging.getLogger("user").info("training on %s", collab.site_name)
            return 1

    def main():
        logging.getLogger("user").info("main says hi")
        collab.clients.f()
        return 5

    r = CollabRecipe(job_name="logs", server=Main(main), client=C()).execute(
        SimEnv(num_clients=2, workspace=tmp_path / "ws"))
    assert r.workspace == tmp_path / "ws"
    assert "[server] user: main says hi" in r.log("server")
    assert "[site-2] user: training on site-2" in r.log("site-2")
    assert "site-1" not in r.log("site-2")
    assert (tmp_path / "ws" / "site-1").is_dir()
    assert r.summary()["status"] == "finished"


def test_facade_outside_a_job_is_a_clear_error():
    with pytest.raises(CollabError, match="needs a running collab job"):
        collab.site_name
    with pytest.raises(CollabError, match="copy_context"):
        collab.clients


def test_recipe_validation_errors():
    class NoMain:
        @collab.publish
        def f(self):
            pass

    class TwoMains:
        @collab.main
        def a(self):
            pass

        @collab.main
        def b(self):
            pass

    class MainWithArgs:
        @collab.main
        def a(self, x):
            pass

    with pytest.raises(RecipeError, match="no @collab.main"):
        CollabRecipe(job_name="t", server=NoMain(), client=Echo())
    with pytest.raises(RecipeError, match="2 @collab.main functions"):
        CollabRecipe(job_name="t", server=TwoMains(), client=Echo())
    with pytest.raises(RecipeError, match="must take no arguments"):
        CollabRecipe(job_name="t", server=MainWithArgs(), client=Echo())
    with pytest.raises(RecipeError, match="belongs to the server"):
        CollabRecipe(job_name="t", server=Main(lambda: 1), client=Main(lambda: 1))

    class Nothing:
        pass

    with pytest.raises(RecipeError, match="publishes no methods"):
        CollabRecipe(job_name="t", server=Main(lambda: 1), client=Nothing())
    with pytest.raises(RecipeError, match="is a class; pass an instance"):
        CollabRecipe(job_name="t", server=Main(lambda: 1), client=Echo)
    with pytest.raises(RecipeError, match="job_name"):
        CollabRecipe(job_name="bad name!", server=Main(lambda: 1), client=Echo())
    with pytest.raises(RecipeError, match="min_clients"):
        CollabRecipe(job_name="t", server=Main(lambda: 1), client=Echo(), min_clients=0)
    with pytest.raises(RecipeError, match="but no client"):
        CollabRecipe(job_name="t", server=Main(lambda: 1))
    with pytest.raises(RecipeError, match="num_clients"):
        SimEnv(num_clients=0)


def test_unknown_api_is_a_clear_error():
    from collab_core import UnknownComponentError

    class Other(CollabRecipe):
        api = "other-model"

    recipe = Other(job_name="t", server=Main(lambda: 1), client=Echo())
    with pytest.raises(UnknownComponentError, match="no installed backend serves api 'other-model'"):
        recipe.execute(SimEnv(num_clients=1))


def test_required_plugins_checked_before_anything_runs():
    from collab_core import MissingPluginsError

    ran = []
    recipe = CollabRecipe(job_name="t", server=Main(lambda: ran.append(1)), client=Echo(),
                          required_plugins=["collab-nonexistent-xyz>=1"])
    with pytest.raises(MissingPluginsError, match="pip install 'collab-nonexistent-xyz>=1'"):
        recipe.execute(SimEnv(num_clients=1))
    assert ran == []


def test_thousand_clients():
    class C:
        @collab.publish
        def train(self, w):
            return w + 1

    def main():
        w = np.zeros(10, dtype=np.float32)
        for _ in range(3):
            res = collab.clients.train(w)
            w = np.mean([v for _, v in res], axis=0)
        return w

    out = run(Main(main), C(), n=1000)
    assert np.allclose(out, 3)
