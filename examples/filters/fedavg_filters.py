"""FedAvg with filters: every client's update is clipped (and noised) and quantized before it
leaves the site; the server dequantizes and inspects what arrives.

    pip install collab-core collab-sim numpy            # collab-tcp too for --env poc
    python fedavg_filters.py                            # SimEnv, 3 sites
    python fedavg_filters.py --env poc                  # the same job as real processes
    python fedavg_filters.py --noise 0.05 --clip 0.5    # stronger privacy, slower progress

The filters are plain objects (update_filters.py); the recipe says where each one runs::

    clip = ClipAndNoise(clip_norm=..., noise=...)
    recipe.add_client_input_filter(clip, tasks=["train"])     # remembers the global weights
    recipe.add_client_output_filter(clip, tasks=["train"])    # clips + noises the update
    quantize = Quantize(bits=8)
    recipe.add_client_output_filter(quantize, tasks=["train"])  # after clipping: uint8 codes
    recipe.add_server_input_filter(Inspect(), tasks=["train"])  # sees the codes as they arrive
    recipe.add_server_input_filter(quantize, tasks=["train"])   # floats again for main

Output filters run before the bytes are made and input filters after they are read, so the
server's main only ever sees dequantized weights, and what crossed the wire was uint8.
"""

from __future__ import annotations

import argparse
import zlib

import numpy as np
from update_filters import ClipAndNoise, Inspect, Quantize

from collab_core import CollabRecipe, collab

TRUE_W = np.linspace(-1.0, 1.0, 16)


class Trainer:
    @collab.init
    def load(self):
        rng = np.random.default_rng(zlib.crc32(collab.site_name.encode()))
        n = int(rng.integers(40, 90))
        self.x = rng.normal(size=(n, TRUE_W.size))
        self.y = self.x @ TRUE_W + 0.01 * rng.normal(size=n)

    @collab.publish
    def train(self, w, steps=5, lr=0.05):
        for _ in range(steps):
            w = w - lr * 2 * self.x.T @ (self.x @ w - self.y) / len(self.y)
        return w, len(self.y)


class FedAvg:
    def __init__(self, num_rounds: int = 8):
        self.num_rounds = num_rounds

    @collab.main
    def run(self):
        w = np.zeros_like(TRUE_W)
        for r in range(1, self.num_rounds + 1):
            results = collab.clients.train(w)
            total = sum(n for _, (_, n) in results)
            w = sum(w_site * (n / total) for _, (w_site, n) in results)
            print(f"round {r}: |w - true_w| = {np.abs(w - TRUE_W).max():.4f}")
        return w


def make_recipe(num_clients: int, rounds: int, clip: float, noise: float) -> CollabRecipe:
    recipe = CollabRecipe(job_name="fedavg_filters", server=FedAvg(num_rounds=rounds), client=Trainer(),
                          min_clients=num_clients)
    clipper = ClipAndNoise(clip_norm=clip, noise=noise, seed=7)
    recipe.add_client_input_filter(clipper, tasks=["train"])
    recipe.add_client_output_filter(clipper, tasks=["train"])
    quantize = Quantize(bits=8)
    recipe.add_client_output_filter(quantize, tasks=["train"])
    recipe.add_server_input_filter(Inspect(), tasks=["train"])
    recipe.add_server_input_filter(quantize, tasks=["train"])
    return recipe


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="FedAvg whose updates are clipped, noised and quantized by filters")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--clip", type=float, default=1.0, help="L2 bound of each site's update")
    parser.add_argument("--noise", type=float, default=0.01, help="noise std, as a multiple of --clip")
    parser.add_argument("--env", choices=("sim", "poc"), default="sim")
    parser.add_argument("--export", metavar="DIR", help="write the job folder instead of running it")
    args = parser.parse_args(argv)

    recipe = make_recipe(args.clients, args.rounds, args.clip, args.noise)
    if args.export:
        print(f"job folder written to {recipe.export(args.export)}")
        return 0
    if args.env == "poc":
        from collab_tcp import PocEnv

        env = PocEnv(num_clients=args.clients)
    else:
        from collab_sim import SimEnv

        env = SimEnv(num_clients=args.clients)
    run = recipe.execute(env)
    print(f"status: {run.status}")
    if run.status != "finished":
        print(run.error)
        return 1
    print(f"final |w - true_w| = {np.abs(run.result - TRUE_W).max():.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
