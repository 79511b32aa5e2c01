"""What ``secure=True`` costs for a 10 MB numpy payload.

Run: .venv/bin/python benchmarks/secure_calls.py [--reps N] [--mb M] [--no-poc]

Every figure is the median of N repetitions measured in this run.

  envelope  in process: seal a call (ECDH + HKDF + ECDSA + AES-GCM) and open it at the target
            (signature check + AES-GCM), then seal and open the result; against wire.dumps+loads
            of the same value, which every call pays anyway.
  PocEnv    a real project on this machine: site-1 calls site-2 through the server with the
            payload and gets it back, with and without secure=True (one PocEnv run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from collab_core import wire  # noqa: E402
from collab_tcp.kit import Kit, provision  # noqa: E402
from collab_tcp.secure import SecureChannel  # noqa: E402


def _median(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def envelope(mb: int, reps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        kits = provision("bench", "127.0.0.1:1", ["site-1", "site-2"], [], Path(tmp) / "kits")
        site1, site2 = Kit.load(kits["site-1"]), Kit.load(kits["site-2"])
        certs = {k.name: k.cert.read_text() for k in (site1, site2)}
        a, b = SecureChannel(site1, "bench-job", certs), SecureChannel(site2, "bench-job", certs)
        payload = np.random.default_rng(0).random(mb * 1_000_000 // 8)

        def secure_round() -> None:
            env, session = a.seal_call("site-2", "train", True, (payload,), {})
            args, _, answer = b.open_call("site-1", "train", True, env)
            back = session.open_result(answer.seal_result(True, args[0]), "site-2")
            assert back["value"].shape == payload.shape

        def wire_round() -> None:
            for _ in range(2):  # there and back
                wire.loads(*wire.dumps({"args": [payload], "kwargs": {}}))

        plain, secure = _median(wire_round, reps), _median(secure_round, reps)
        print(f"envelope, {mb} MB float64 there and back: wire dumps+loads {plain * 1000:.1f} ms, "
              f"sealed {secure * 1000:.1f} ms (sealing adds {(secure - plain) * 1000:.1f} ms: copies, AES-GCM, "
              f"ECDH and ECDSA; "
              f"{2 * mb / max(secure - plain, 1e-9):.0f} MB/s)")


POC = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from collab_core import CollabRecipe, collab
    from collab_tcp import PocEnv

    MB, REPS = @MB@, @REPS@

    class Site:
        @collab.publish
        def echo(self, arr):
            return arr

        @collab.publish
        def measure(self, mb, reps):
            big = np.random.default_rng(0).random(mb * 1000 * 1000 // 8)
            out = {"False": [], "True": []}
            for _ in range(reps):
                for secure in (False, True):
                    t0 = time.perf_counter()
                    back = collab.clients["site-2"](secure=secure).echo(big)
                    out[str(secure)].append(time.perf_counter() - t0)
                    assert np.array_equal(back, big)
            return out

    class Server:
        @collab.main
        def run(self):
            return collab.clients["site-1"].measure(MB, REPS)

    if __name__ == "__main__":
        recipe = CollabRecipe(job_name="securebench", server=Server(), client=Site(), min_clients=2)
        run = recipe.execute(PocEnv(num_clients=2, workspace=sys.argv[1]))
        assert run.status == "finished", run.error
        print("RESULT", json.dumps(run.result))
""")


def poc(mb: int, reps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        driver = Path(tmp) / "driver.py"
        driver.write_text(POC.replace("@MB@", str(int(mb))).replace("@REPS@", str(int(reps))))
        proc = subprocess.run([sys.executable, str(driver), str(Path(tmp) / "ws")],
                              capture_output=True, text=True, timeout=600, cwd=tmp)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(proc.stdout[-2000:], proc.stderr[-2000:])
            raise SystemExit("the PocEnv run failed")
        import json

        result = json.loads(line[len("RESULT "):])
        plain, secure = statistics.median(result["False"]), statistics.median(result["True"])
        print(f"PocEnv, {mb} MB float64 site-1 -> server -> site-2 and back: plain {plain * 1000:.0f} ms, "
              f"secure {secure * 1000:.0f} ms (+{(secure - plain) * 1000:.0f} ms, x{secure / plain:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--mb", type=int, default=10)
    parser.add_argument("--no-poc", action="store_true", help="only the in-process envelope figures")
    args = parser.parse_args()
    envelope(args.mb, args.reps)
    if not args.no_poc:
        poc(args.mb, args.reps)


if __name__ == "__main__":
    main()
