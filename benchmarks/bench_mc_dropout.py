"""Monte-Carlo dropout (the BU detector's input) against the unavoidable work, in one run.

For each model: ``TorchBackend.stochastic_probabilities`` (its deterministic part once per input,
then the layers from the first dropout on per mask), the same with the split switched off (a full
forward per mask, the library before the split), and a hand-written torch loop (dropout layers in
training mode, ``n_samples`` forward passes under ``inference_mode``: what a user would write).
Ratios are against the hand-written loop; medians of ``--rounds`` interleaved rounds.

    python benchmarks/bench_mc_dropout.py [--n 64] [--samples 50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def models():
    from fisher_ref.backends import torch_models as tm

    return {"LeNet-5 (dropout 0.5), 1x28x28": (tm.lenet5(dropout=0.5), (1, 28, 28)),
            "CIFAR VGG width 0.5, 3x32x32": (tm.vgg_cifar(width=0.5), (3, 32, 32)),
            "CIFAR VGG width 1, 3x32x32": (tm.vgg_cifar(width=1), (3, 32, 32))}


def hand_written(torch, net, x, n_samples):
    drops = [m for m in net.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    for m in drops:
        m.train()
    try:
        with torch.inference_mode():
            xt = torch.as_tensor(x)
            return [torch.softmax(net(xt), 1) for _ in range(n_samples)]
    finally:
        for m in drops:
            m.eval()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    import torch

    from fisher_ref.backends import TorchBackend

    print(f"MC dropout: {args.n} inputs x {args.samples} masks, {platform.machine()}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), {time.strftime('%Y-%m-%d')}")
    print(f"{'model':34s} {'hand-written s':>14s} {'split s':>8s} {'ratio':>6s} {'no split s':>10s} {'ratio':>6s}")
    for name, (net, shape) in models().items():
        x = np.random.default_rng(0).random((args.n, *shape), dtype=np.float32)
        split, whole = TorchBackend(net, input_shape=shape), TorchBackend(net, input_shape=shape)
        assert split._dropout_parts() is not None
        whole._dropout_split = None
        np.testing.assert_array_equal(split.stochastic_probabilities(x, 3, rng=0),
                                      whole.stochastic_probabilities(x, 3, rng=0))
        runs = {"hand": [], "split": [], "whole": []}
        for _ in range(args.rounds):
            runs["hand"].append(timed(lambda: hand_written(torch, net, x, args.samples)))
            runs["split"].append(timed(lambda: split.stochastic_probabilities(x, args.samples, rng=0)))
            runs["whole"].append(timed(lambda: whole.stochastic_probabilities(x, args.samples, rng=0)))
        h, s, w = (statistics.median(runs[k]) for k in ("hand", "split", "whole"))
        print(f"{name:34s} {h:14.3f} {s:8.3f} {s / h:6.2f} {w:10.3f} {w / h:6.2f}", flush=True)
    print("ratio: seconds / the hand-written loop's; the split and the full passes give the same numbers bit for bit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
