"""collab-tracking receivers: records of every kind in, real TensorBoard / MLflow / W&B artifacts
out, read back with each tool's own format (event files, MlflowClient, offline .wandb files)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import struct
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from collab_core.errors import PluginError

if importlib.util.find_spec("collab_tracking") is None:  # the plugin is not pip-installed yet
    sys.path.insert(0, str(Path(__file__).parents[2] / "plugins" / "collab_tracking" / "src"))

from collab_tracking.receivers import (  # noqa: E402
    RECEIVERS,
    MlflowReceiver,
    Receiver,
    TensorBoardReceiver,
    WandbReceiver,
)
from collab_tracking.receivers.base import Histogram, Scalar  # noqa: E402

SITES = ["site-1", "site-2", "site-3", "server"]
N = 6  # steps per site
T0 = 1_700_000_000.0
SCALAR_NAMES = ["loss", "lr/a", "lr/b", "acc", "flare_metric", "wl", "nested/x"]


# ---------------------------------------------------------------------------- the records


def site_records(i: int, site: str, n: int = N) -> list[dict]:
    out: list[dict] = []

    def rec(tool, op, **fields):
        out.append(
            {"site": site, "tool": tool, "op": op, "time": T0 + len(out), "rank": 0, **fields}
        )

    rec(
        "wandb",
        "wandb_init",
        project="user-project",
        name="user-run",
        config={"batch": 32, "model": {"depth": 3}},
    )
    rec("mlflow", "param", key="lr", value=0.1)
    rec("mlflow", "param", key="optimizer", value="sgd")
    rec("mlflow", "tag", key="team", value=f"team-{i}")
    rec("wandb", "wandb_config", data={"augment": True})
    for s in range(n):
        base = i * 1000 + s
        rec("tensorboard", "scalar", tag="loss", value=base + 0.5, step=s)
        rec(
            "tensorboard",
            "scalars",
            main_tag="lr",
            values={"a": base + 0.25, "b": base + 0.75},
            step=s,
        )
        rec("mlflow", "metric", key="acc", value=base + 0.125, step=None)  # counter: 0, 1, ...
        rec("flare", "scalar", tag="flare_metric", value=float(base), step=None)
        rec(
            "wandb",
            "wandb_log",
            step=s,
            data={"wl": np.float32(base + 0.0625), "nested": {"x": base}, "note": "not a number"},
        )
        if s < 2:
            values = (
                np.arange(100, dtype=np.float32) + i
                if s == 0
                else np.random.default_rng(i).normal(size=50)
            )
            rec(
                "tensorboard",
                "histogram",
                tag="weights",
                values=values,
                step=s,
                bins="tensorflow" if s == 0 else 10,
            )
        if s == 0:
            rec("tensorboard", "text", tag="notes", text=f"hello from {site}", step=0)
    rec("wandb", "wandb_finish")
    return out


def all_records(sites=SITES, n=N) -> list[dict]:
    """Every site's records, interleaved the way a server receives them, plus a step that goes
    backwards (site-1 logs "loss" at step 2 again) and a broken record (no "site")."""
    per_site = [site_records(i, s, n) for i, s in enumerate(sites)]
    records = []
    for k in range(max(map(len, per_site))):
        records += [recs[k] for recs in per_site if k < len(recs)]
    records.append(
        {
            "site": "site-1",
            "tool": "tensorboard",
            "op": "scalar",
            "time": T0 + 999,
            "rank": 0,
            "tag": "loss",
            "value": 99.0,
            "step": 2,
        }
    )
    records.insert(
        7, {"tool": "mlflow", "op": "metric", "key": "acc", "value": 1.0, "step": 0, "time": T0}
    )
    return records


def expected_scalars(site: str, n=N) -> dict[str, list[tuple[int, float]]]:
    i = SITES.index(site)
    exp = {}
    for name, off in [
        ("loss", 0.5),
        ("lr/a", 0.25),
        ("lr/b", 0.75),
        ("acc", 0.125),
        ("flare_metric", 0.0),
        ("wl", 0.0625),
        ("nested/x", 0.0),
    ]:
        exp[name] = [(s, i * 1000 + s + off) for s in range(n)]
    if site == "site-1":
        exp["loss"].append((2, 99.0))
    return exp


def feed(receiver, records, batch=17):
    """receive() in batches from one dedicated thread, then close() (twice: idempotent)."""
    errors = []

    def work():
        try:
            for k in range(0, len(records), batch):
                receiver.receive(records[k : k + batch])
            receiver.close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=work, name="receiver")
    t.start()
    t.join(120)
    assert not t.is_alive()
    if errors:
        raise errors[0]
    receiver.close()


# ---------------------------------------------------------------------------- TensorBoard


def read_events(folder: Path):
    """Every Event of a run folder's event files (TFRecord framing, tensorboardX's protobufs)."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack_from("<Q", data, pos)
            pos += 12  # length, masked crc of length
            ev = Event()
            ev.ParseFromString(data[pos : pos + length])
            pos += length + 4  # data, masked crc of data
            events.append(ev)
    return events


def tb_contents(folder: Path):
    scalars, histos, texts, plugins = defaultdict(list), defaultdict(list), {}, set()
    for ev in read_events(folder):
        for v in ev.summary.value:
            kind = v.WhichOneof("value")
            if kind == "simple_value":
                scalars[v.tag].append((ev.step, v.simple_value))
            elif kind == "histo":
                histos[v.tag].append((ev.step, v.histo.num))
            elif v.metadata.plugin_data.plugin_name == "text":
                texts[v.tag] = v.tensor.string_val[0].decode()
            if v.metadata.plugin_data.plugin_name:
                plugins.add((v.metadata.plugin_data.plugin_name, v.tag))
    return scalars, histos, texts, plugins


def test_tensorboard_every_record_kind(tmp_path, caplog):
    pytest.importorskip("tensorboardX")
    caplog.set_level(logging.WARNING, logger="collab_tracking.receivers")
    receiver = TensorBoardReceiver(tmp_path, "job")
    feed(receiver, all_records())

    log_dir = tmp_path / "tensorboard"
    assert sorted(p.name for p in log_dir.iterdir()) == sorted(SITES)
    for i, site in enumerate(SITES):
        scalars, histos, texts, plugins = tb_contents(log_dir / site)
        expected = expected_scalars(site)
        assert sorted(scalars) == sorted(expected), site
        for name, series in expected.items():
            assert scalars[name] == series, (site, name)
        assert histos["weights"] == [(0, 100), (1, 50)]
        assert texts["notes/text_summary"] == f"hello from {site}"
        assert texts["tags/team/text_summary"] == f"team-{i}"
        assert texts["tags/wandb.project/text_summary"] == "user-project"
        # params + W&B config: one HParams session per site
        assert ("hparams", "_hparams_/session_start_info") in plugins
        start = next(
            v
            for ev in read_events(log_dir / site)
            for v in ev.summary.value
            if v.tag == "_hparams_/session_start_info"
        )
        from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

        info = HParamsPluginData.FromString(start.metadata.plugin_data.content).session_start_info
        assert info.hparams["lr"].number_value == pytest.approx(0.1)
        assert info.hparams["optimizer"].string_value == "sgd"
        assert info.hparams["model/depth"].number_value == 3
        assert info.hparams["augment"].bool_value is True
    messages = caplog.text
    assert "'note'" in messages and "not a number" in messages  # non-numeric wandb.log value
    assert messages.count("'note'") == 1  # once, not once per record
    assert "has no 'site'" in messages  # the broken record, skipped


def test_tensorboard_options_and_site_folders(tmp_path):
    pytest.importorskip("tensorboardX")
    receiver = TensorBoardReceiver(tmp_path, "job", log_dir=tmp_path / "tb")
    recs = [
        {
            "site": s,
            "tool": "flare",
            "op": "scalar",
            "tag": "x",
            "value": 1.0,
            "step": None,
            "time": T0,
            "rank": 0,
        }
        for s in ["a/b", "..", "a_b"]
    ]
    feed(receiver, recs)
    names = sorted(p.name for p in (tmp_path / "tb").iterdir())
    assert names == ["__", "a_b", "a_b-2"]
    assert not (tmp_path / "tensorboard").exists()
    with pytest.raises(RuntimeError):
        receiver.receive(recs)


# ---------------------------------------------------------------------------- MLflow


@pytest.fixture(scope="module")
def mlflow_workspace(tmp_path_factory):
    """One workspace (and sqlite store) for the module: creating an MLflow database takes
    seconds; the second test writes into it through an explicit tracking_uri."""
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("alembic")
    return tmp_path_factory.mktemp("mlflow-job")


def test_mlflow_parent_and_child_runs(mlflow_workspace, caplog, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(mlflow_workspace.parent)  # where ./mlruns would appear by mistake
    caplog.set_level(logging.WARNING, logger="collab_tracking.receivers")
    monkeypatch.setenv("COLLAB_WORKSPACE_ROOT", str(mlflow_workspace))
    receiver = MlflowReceiver(mlflow_workspace / "run-1" / "server", "job")
    store = mlflow_workspace / "mlflow" / "mlflow.db"
    assert receiver.tracking_uri == f"sqlite:///{store.as_posix()}"
    assert "pip install mlflow" in receiver.ui_command
    assert receiver.ui_command.endswith(f"mlflow ui --backend-store-uri {receiver.tracking_uri}")
    extra = [  # MLflow-specific: a param that changes, a name MLflow does not accept
        {"site": "site-2", "tool": "mlflow", "op": "param", "key": "lr", "value": 0.2},
        {
            "site": "site-2",
            "tool": "mlflow",
            "op": "metric",
            "key": "acc (top-1)",
            "value": 1.5,
            "step": 0,
            "time": T0,
        },
    ]
    feed(receiver, all_records() + extra)
    assert store.is_file()
    assert not (mlflow_workspace / "run-1" / "server" / "mlflow.db").exists()
    assert not (mlflow_workspace.parent / "mlruns").exists()

    client = MlflowClient(receiver.tracking_uri)
    exp = client.get_experiment_by_name("job")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("collab.role") == "job"]
    assert len(parents) == 1 and parents[0].info.run_name == "job"
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    children = {
        r.info.run_name: r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert sorted(children) == sorted(SITES)
    for i, site in enumerate(SITES):
        run = children[site]
        assert run.info.status == "FINISHED"
        assert run.data.tags["collab.site"] == site
        assert run.data.tags["team"] == f"team-{i}"
        assert run.data.tags["wandb.project"] == "user-project"
        assert run.data.tags["text/notes"] == f"hello from {site}"
        assert run.data.params == {
            "lr": "0.1",
            "optimizer": "sgd",
            "batch": "32",
            "model/depth": "3",
            "augment": "True",
        }
        expected = expected_scalars(site)
        if site == "site-2":
            expected["acc _top-1_"] = [(0, 1.5)]
        assert sorted(run.data.metrics) == sorted(expected)
        for name, series in expected.items():
            history = client.get_metric_history(run.info.run_id, name)
            got = sorted((m.step, m.value, m.timestamp) for m in history)
            assert [(s, v) for s, v, _ in got] == sorted(series), (site, name)
            assert all(ts >= T0 * 1000 for _, _, ts in got)
    assert "MLflow has no histograms" in caplog.text
    assert "param 'lr' of site-2 changed from '0.1' to '0.2'" in caplog.text
    assert "'acc (top-1)' is not a valid MLflow key; logged as 'acc _top-1_'" in caplog.text


# ---------------------------------------------------------------------------- W&B offline


@pytest.fixture(scope="module")
def wandb_env(tmp_path_factory):
    """Offline, silent, and every W&B file of this process under tmp (set before the first
    wandb.init: the wandb service keeps the environment it started with)."""
    pytest.importorskip("wandb")
    home = tmp_path_factory.mktemp("wandb-home")
    with pytest.MonkeyPatch.context() as mp:
        for var, value in {
            "HOME": home,
            "WANDB_DIR": home / "wandb-dir",
            "WANDB_CACHE_DIR": home / "cache",
            "WANDB_CONFIG_DIR": home / "config",
            "WANDB_DATA_DIR": home / "data",
            "WANDB_ARTIFACT_DIR": home / "artifacts",
            "WANDB_MODE": "offline",
            "WANDB_SILENT": "true",
        }.items():
            mp.setenv(var, str(value))
        yield home


def read_wandb_run(run_dir: Path):
    """The records of an offline run's ``run-<id>.wandb`` (a LevelDB-style log of
    ``wandb_internal_pb2.Record``: 7-byte file header, 32 KiB blocks, 7-byte chunk headers)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, chunks, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, pos)
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # full
            chunks.append(chunk)
        elif kind == 2:  # first
            pending = chunk
        elif kind == 3:  # middle
            pending += chunk
        elif kind == 4:  # last
            chunks.append(pending + chunk)
    return [pb.Record.FromString(c) for c in chunks]


def wandb_contents(run_dir: Path):
    name, config, summary, rows = None, {}, {}, []
    for rec in read_wandb_run(run_dir):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            name = rec.run.display_name
            config.update({u.key: json.loads(u.value_json) for u in rec.run.config.update})
        elif kind == "config":
            config.update({u.key: json.loads(u.value_json) for u in rec.config.update})
        elif kind == "summary":
            for u in rec.summary.update:
                summary[tuple(u.nested_key) or (u.key,)] = json.loads(u.value_json)
        elif kind == "history":
            rows.append(
                {
                    tuple(i.nested_key) or (i.key,): json.loads(i.value_json)
                    for i in rec.history.item
                }
            )
    return name, config, summary, rows


def wandb_runs(base: Path, timeout: float = 10.0):
    """{site: (name, config, summary, history rows)} of the offline runs under ``base``.

    ``run.finish()`` can return before wandb's service process has written the whole file:
    wait (a bounded time) until every run's file holds its exit record."""
    deadline = time.monotonic() + timeout
    while True:
        done = [
            any(r.WhichOneof("record_type") == "exit" for r in read_wandb_run(d))
            for d in sorted((base / "wandb").glob("offline-run-*"))
        ]
        if all(done) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    print(f"W&B files complete after {timeout - (deadline - time.monotonic()):.2f} s: {done}")
    runs = {}
    for run_dir in sorted((base / "wandb").glob("offline-run-*")):
        contents = wandb_contents(run_dir)
        runs[contents[0]] = contents
    return runs


def test_wandb_offline_runs(wandb_env, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="collab_tracking.receivers")
    receiver = WandbReceiver(tmp_path, "job")
    feed(receiver, all_records())

    runs = wandb_runs(tmp_path)
    assert sorted(runs) == sorted(SITES)
    for i, site in enumerate(SITES):
        _, config, summary, rows = runs[site]
        assert config["collab_site"] == site and config["collab_job"] == "job"
        for key, value in {
            "lr": 0.1,
            "optimizer": "sgd",
            "batch": 32,
            "model/depth": 3,
            "augment": True,
            "tags/team": f"team-{i}",
            "tags/wandb.project": "user-project",
            "tags/wandb.name": "user-run",
        }.items():
            assert config[key] == value, (site, key)
        assert summary[("notes",)] == f"hello from {site}"
        for name, series in expected_scalars(site).items():
            got = [
                (row.get(("step",), row[("_step",)]), row[(name,)])
                for row in rows
                if (name,) in row
            ]
            assert got == series, (site, name)
        hist_steps = [
            row[("_step",)] for row in rows if row.get(("weights", "_type")) == "histogram"
        ]
        assert hist_steps == [0, 1]
        steps = [row[("_step",)] for row in rows]
        assert steps == sorted(set(steps)), "W&B steps must increase"
        assert not any(("note",) in row for row in rows)
    # site-1's "loss" at step 2 after step 5: its own row at the next free step, step kept
    late = [row for row in runs["site-1"][3] if ("step",) in row]
    assert late == [{**late[0], ("loss",): 99.0, ("step",): 2, ("_step",): N}]
    assert "W&B run steps must increase" in caplog.text


# ---------------------------------------------------------------------------- volume


def volume_records(n=1000):
    return [
        {
            "site": f"site-{i}",
            "tool": "tensorboard",
            "op": "scalar",
            "tag": "loss",
            "value": float(s),
            "step": s,
            "time": T0 + s,
            "rank": 0,
        }
        for s in range(n)
        for i in (1, 2, 3)
    ]


def timed_feed(receiver, records):
    t = time.perf_counter()
    feed(receiver, records, batch=250)
    took = time.perf_counter() - t
    print(f"{type(receiver).__name__}: {len(records)} scalars in {took:.2f} s")
    assert took < 30
    return took


def test_volume_tensorboard(tmp_path):
    pytest.importorskip("tensorboardX")
    timed_feed(TensorBoardReceiver(tmp_path, "vol"), volume_records())
    for i in (1, 2, 3):
        scalars, *_ = tb_contents(tmp_path / "tensorboard" / f"site-{i}")
        assert scalars["loss"] == [(s, float(s)) for s in range(1000)]


def test_mlflow_tracking_uri_env(mlflow_workspace, tmp_path, monkeypatch):
    """MLFLOW_TRACKING_URI is used when no tracking_uri is given; the option still wins."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{(mlflow_workspace / 'mlflow' / 'mlflow.db').as_posix()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("COLLAB_WORKSPACE_ROOT", str(tmp_path / "root"))
    assert MlflowReceiver(tmp_path, "j", tracking_uri="http://x:1").tracking_uri == "http://x:1"
    receiver = MlflowReceiver(tmp_path / "ws", "from-env")
    assert receiver.tracking_uri == uri
    feed(receiver, all_records())
    assert not (tmp_path / "root").exists() and not (tmp_path / "ws" / "mlflow.db").exists()
    exp = MlflowClient(uri).get_experiment_by_name("from-env")
    runs = MlflowClient(uri).search_runs([exp.experiment_id])
    assert {r.info.run_name for r in runs} == {"from-env", *SITES}


_RUN_ONE = """
import json, sys
from collab_tracking.receivers import MlflowReceiver
receiver = MlflowReceiver(sys.argv[1], "project", run_name=sys.argv[2])
records = [{"site": s, "tool": "mlflow", "op": "metric", "key": "loss", "value": float(i),
            "step": i, "time": 1.0} for i in range(50) for s in ("site-1", "site-2")]
for k in range(0, len(records), 7):
    receiver.receive(records[k:k + 7])
receiver.close()
print(receiver.tracking_uri)
"""


def test_mlflow_runs_of_a_project_share_one_store(tmp_path):
    """Two runs of the same project, started at the same time in two processes with their own
    workspaces, land in one default store (created once, under the lock) and are both listed."""
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("alembic")
    from mlflow import MlflowClient

    root = tmp_path / "root"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["COLLAB_WORKSPACE_ROOT"] = str(root)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RUN_ONE, str(root / "sim" / name / "server"), name],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name in ("run-a", "run-b")
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    uri = f"sqlite:///{(root / 'mlflow' / 'mlflow.db').as_posix()}"
    assert [out.strip() for out, _ in outs] == [uri, uri]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("project")
    runs = client.search_runs([exp.experiment_id])
    parents = {r.info.run_name: r for r in runs if r.data.tags.get("collab.role") == "job"}
    assert sorted(parents) == ["run-a", "run-b"]
    for parent in parents.values():
        children = [
            r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
        ]
        assert sorted(r.info.run_name for r in children) == ["site-1", "site-2"]
        for child in children:
            history = client.get_metric_history(child.info.run_id, "loss")
            assert sorted(m.step for m in history) == list(range(50))
    assert not list((root / "sim").rglob("mlflow.db"))


@pytest.mark.parametrize(
    ("env_mode", "expected"),
    [(None, "offline"), ("offline", "offline"), ("disabled", "disabled"), ("dryrun", "offline"),
     ("online", "online")],
)
def test_wandb_mode_from_env(monkeypatch, tmp_path, env_mode, expected):
    if env_mode is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", env_mode)
    assert WandbReceiver(tmp_path, "j").mode == expected
    assert WandbReceiver(tmp_path, "j", mode="offline").mode == "offline"  # the option wins


def test_wandb_mode_env_invalid(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "onlin")
    with pytest.raises(PluginError, match="WANDB_MODE must be one of"):
        WandbReceiver.check()
    WandbReceiver.check(mode="offline")  # an explicit mode does not read WANDB_MODE


def test_wandb_disabled_from_env_writes_nothing(wandb_env, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    receiver = WandbReceiver(tmp_path, "job", dir=tmp_path / "wb")
    feed(receiver, all_records())
    assert not list((tmp_path / "wb").glob("wandb/offline-run-*"))


def test_wandb_offline_from_env_writes_offline_runs(wandb_env, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    receiver = WandbReceiver(tmp_path, "job", dir=tmp_path / "wb")
    assert receiver.mode == "offline"
    feed(receiver, all_records())
    assert sorted(wandb_runs(tmp_path / "wb")) == sorted(SITES)


def test_volume_mlflow(mlflow_workspace, tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{(mlflow_workspace / 'mlflow' / 'mlflow.db').as_posix()}"
    receiver = MlflowReceiver(
        tmp_path, "vol", tracking_uri=uri, experiment_name="volume", run_name="vol-run"
    )
    timed_feed(receiver, volume_records())
    client = MlflowClient(uri)
    assert client.get_run(receiver.parent_run_id).info.run_name == "vol-run"
    assert client.get_experiment(receiver.experiment_id).name == "volume"
    for site, run_id in receiver.child_run_ids.items():
        history = client.get_metric_history(run_id, "loss")
        assert sorted(m.step for m in history) == list(range(1000)), site
    assert not (tmp_path / "mlflow.db").exists()  # the explicit URI was used


def test_volume_wandb(wandb_env, tmp_path):
    timed_feed(WandbReceiver(tmp_path, "vol", dir=tmp_path / "wb"), volume_records())
    runs = wandb_runs(tmp_path / "wb")
    assert sorted(runs) == ["site-1", "site-2", "site-3"]
    for _, _, _, rows in runs.values():
        assert [row[("loss",)] for row in rows if ("loss",) in row] == [
            float(s) for s in range(1000)
        ]


# ---------------------------------------------------------------------------- conversion


class Collect(Receiver):
    """A receiver that keeps the converted events (no tracking library)."""

    tool = extra = "collect"

    def __init__(self):
        super().__init__("/nonexistent", "job")
        self.events = []

    def _write(self, events):
        self.events += events

    def _close(self):
        pass


def test_conversion_steps_values_and_bad_records(caplog):
    caplog.set_level(logging.WARNING, logger="collab_tracking.receivers")
    r = Collect()

    def rec(op, **fields):
        return {"site": "s", "tool": "flare", "op": op, "time": T0, "rank": 0, **fields}

    r.receive(
        [
            rec("scalar", tag="a", value=1, step=None),  # counter: 0
            rec("scalar", tag="a", value=np.array(2.5), step=None),  # 1 (0-d array)
            rec("scalar", tag="a", value=True, step=7.0),  # integral float step
            rec("scalar", tag="a", value=3, step=None),  # the counter goes on after 7
            rec("scalar", tag="b", value=np.int64(4), step=None),  # counters are per name
            rec("scalar", tag="a", value=1.0, step="x"),  # bad step: skipped
            rec("scalar", tag="a", value=1.0, step=1.5),  # bad step: skipped
            rec("scalar", tag="a", value="high", step=1),  # not a number: skipped
            rec("histogram", tag="h", values=np.array([1.0, np.nan, 2.0]), step=None, bins="bad"),
            rec("histogram", tag="h", values=np.array([np.nan]), step=None),  # nothing left
            rec("nonsense"),
            {"site": "s", "op": "scalar", "tag": "a", "value": 1.0},  # no time: now, step 9
            "not a dict",
        ]
    )
    scalars = [(e.name, e.step, e.value) for e in r.events if isinstance(e, Scalar)]
    assert scalars == [("a", 0, 1.0), ("a", 1, 2.5), ("a", 7, 1.0), ("a", 8, 3.0),
                       ("b", 0, 4.0), ("a", 9, 1.0)]  # fmt: skip
    (hist,) = [e for e in r.events if isinstance(e, Histogram)]
    assert hist.values.tolist() == [1.0, 2.0] and hist.bins == "tensorflow" and hist.step == 0
    text = caplog.text
    for needle in ["step must be an int", "is a str, not a number", "NaN/inf", "bins='bad'",
                   "no (finite) values", "unknown op 'nonsense'", "must be a dict"]:  # fmt: skip
        assert needle in text, needle
    r.close()
    r.close()
    with pytest.raises(RuntimeError, match="closed"):
        r.receive([])


# ---------------------------------------------------------------------------- check()


@pytest.mark.parametrize(
    ("cls", "module", "extra"),
    [
        (TensorBoardReceiver, "tensorboardX", "tensorboard"),
        (MlflowReceiver, "mlflow", "mlflow"),
        (MlflowReceiver, "sqlalchemy", "mlflow"),
        (WandbReceiver, "wandb", "wandb"),
    ],
)
def test_check_missing_library(monkeypatch, cls, module, extra):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(PluginError, match=rf"pip install 'collab-tracking\[{extra}\]'"):
        cls.check()
    with pytest.raises(PluginError, match=module):
        cls("/nonexistent", "job")


def test_check_options():
    assert set(RECEIVERS) == {"tensorboard", "mlflow", "wandb"}
    with pytest.raises(PluginError, match="unknown option.*'logdir'.*log_dir"):
        TensorBoardReceiver.check(logdir="x")
    with pytest.raises(PluginError, match="log_dir"):
        TensorBoardReceiver.check(log_dir=3)
    with pytest.raises(PluginError, match="mode must be one of"):
        WandbReceiver.check(mode="onlin")
    with pytest.raises(PluginError, match="experiment_name"):
        MlflowReceiver.check(experiment_name="")
    with pytest.raises(PluginError, match="unknown option"):
        MlflowReceiver.check(experiment="x")
    pytest.importorskip("wandb")
    WandbReceiver.check(mode="online", project="p", dir=Path("/tmp"))  # no exception
    pytest.importorskip("mlflow")
    MlflowReceiver.check(tracking_uri="http://localhost:5000", experiment_name="e", run_name="r")


# ---------------------------------------------------------------------------- viewer commands


def test_viewer_commands_work_after_the_install_they_print(tmp_path, monkeypatch):
    """The extras bring what writes the files; each viewer line names the install its viewer
    needs: TensorBoard's ``tensorboard`` and MLflow's UI server (mlflow-skinny has none) are
    separate packages, ``wandb sync`` comes with the [wandb] extra."""
    from collab_tracking.receivers import mlflow as mlflow_receiver
    from collab_tracking.receivers import tensorboard as tensorboard_receiver
    from collab_tracking.receivers import wandb as wandb_receiver

    bindir = Path(sys.executable).parent
    tb_line = tensorboard_receiver.ui_command(tmp_path / "tensorboard")
    assert tb_line == f"pip install tensorboard  &&  tensorboard --logdir {tmp_path / 'tensorboard'}"
    if not (bindir / "tensorboard").exists():  # tensorboardX alone has no viewer: say so
        assert importlib.util.find_spec("tensorboard") is None
    ml_line = mlflow_receiver.ui_command()
    store = tmp_path / "collab-root" / "mlflow" / "mlflow.db"
    assert ml_line == f"pip install mlflow  &&  mlflow ui --backend-store-uri sqlite:///{store}"
    if importlib.util.find_spec("mlflow") is not None:
        # `mlflow ui` runs mlflow.server, which needs Flask: not in mlflow-skinny
        server_ok = subprocess.run(
            [sys.executable, "-c", "import mlflow.server"], capture_output=True
        ).returncode == 0
        assert server_ok == (importlib.util.find_spec("flask") is not None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert mlflow_receiver.ui_command().endswith("--backend-store-uri http://mlflow.example:5000")
    wb_line = wandb_receiver.sync_command(tmp_path)
    assert wb_line == f"wandb sync {tmp_path / 'wandb'}/offline-run-*"
    if importlib.util.find_spec("wandb") is not None:  # the [wandb] extra brings the command
        wandb_cli = bindir / "wandb"
        assert wandb_cli.exists()
        out = subprocess.run([str(wandb_cli), "sync", "--help"], capture_output=True, text=True,
                             timeout=120, env=dict(os.environ, WANDB_MODE="offline"))
        assert out.returncode == 0 and "Usage" in out.stdout, out.stderr
