"""Where ONNX Runtime's time goes in the ONNX backend's derivative graphs, by ONNX Runtime's own
node profiler, beside the same call on the torch backend.

The model is the trained CIFAR-10 VGG (width 0.5) of ``paper_results/models``, exported with
``fisher_ref.backends.torch.export_onnx``; on 8 inputs it times ``class_gradients`` (C = 10) and a
block of ``--k`` Fisher-vector products on both backends (best of ``--repeats``), then profiles
the same calls once more with ``SessionOptions.enable_profiling`` and prints, per derivative graph
(reverse: class gradients; forward: Fisher-vector products), the kernel time by operator type.

    python benchmarks/profile_onnx.py [--repeats 3] [--k 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def best_time(f, repeats: int) -> float:
    f()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def kernel_time_by_op(profile: Path) -> tuple[int, float, collections.Counter, collections.Counter]:
    """(runs, total run ms, kernel ms by operator type, nodes by operator type) of one profile file."""
    events = json.loads(profile.read_text())
    ms, nodes = collections.Counter(), collections.Counter()
    runs, run_ms = 0, 0.0
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            ms[e["args"]["op_name"]] += e["dur"] / 1e3
            nodes[e["args"]["op_name"]] += 1
        elif e.get("cat") == "Session" and e["name"] == "model_run":
            runs, run_ms = runs + 1, run_ms + e["dur"] / 1e3
    return runs, run_ms, ms, nodes


def load_model(torch):
    from fisher_ref.backends.torch_models import vgg_cifar

    model = vgg_cifar(width=0.5).eval()
    model.load_state_dict(torch.load(REPO / "paper_results/models/vgg_cifar_w0.5.pt", weights_only=True))
    return model


@contextlib.contextmanager
def profiled_sessions(ort, prefix: str):
    """While active, every new ONNX Runtime session writes a profile under ``prefix``; yields the
    list of those sessions (their ``end_profiling()`` writes the files). The backend creates its
    derivative sessions on first use, so the calls to profile run inside."""
    plain_options, plain_session, sessions = ort.SessionOptions, ort.InferenceSession, []

    def with_profiling():
        options = plain_options()
        options.enable_profiling, options.profile_file_prefix = True, prefix
        return options

    class RecordedSession(plain_session):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            sessions.append(self)

    ort.SessionOptions, ort.InferenceSession = with_profiling, RecordedSession
    try:
        yield sessions
    finally:
        ort.SessionOptions, ort.InferenceSession = plain_options, plain_session


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--k", type=int, default=20, help="Fisher-vector products per block")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    import onnxruntime as ort
    import torch

    from fisher_ref.backends.onnxruntime import OnnxBackend
    from fisher_ref.backends.torch import TorchBackend, export_onnx

    torch.set_num_threads(args.threads)
    model = load_model(torch)
    X = np.random.default_rng(0).random((8, 3, 32, 32)).astype(np.float32)
    V = np.random.default_rng(1).standard_normal((8, args.k, 3 * 32 * 32)).astype(np.float32)
    onnx_model = export_onnx(model, (3, 32, 32))
    tb, ob = TorchBackend(model, input_shape=(3, 32, 32)), OnnxBackend(onnx_model, batch_size=8 * 10)
    print(f"CIFAR-10 VGG (width 0.5), 8 inputs, C = 10, k = {args.k}; torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}, {args.threads} threads; best of {args.repeats}")
    calls = {"class_gradients": lambda b: b.class_gradients(X),
             f"{args.k} Fisher-vector products": lambda b: b.fisher_vector_product(X, V.reshape(8, args.k, 3, 32, 32))}
    for name, call in calls.items():
        t_torch, t_onnx = best_time(lambda: call(tb), args.repeats), best_time(lambda: call(ob), args.repeats)
        print(f"  {name:28s} torch {1e3 * t_torch:8.1f} ms   ONNX Runtime {1e3 * t_onnx:8.1f} ms   "
              f"ratio {t_onnx / t_torch:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        with profiled_sessions(ort, str(Path(tmp) / "ort")) as sessions:
            prof = OnnxBackend(onnx_model, batch_size=8 * 10)
            for call in calls.values():
                call(prof)
        files = [Path(s.end_profiling()) for s in sessions]
        print_profiles(files)
    return 0


def print_profiles(files: list[Path]) -> None:
    for f in files:
        runs, run_ms, ms, nodes = kernel_time_by_op(f)
        total = sum(ms.values())
        if runs == 0 or total == 0:
            continue
        print(f"\nONNX Runtime session: {runs} runs, {run_ms:.1f} ms in run(), {total:.1f} ms in kernels")
        for op, t in ms.most_common(8):
            print(f"  {op:24s} {t:8.1f} ms  {100 * t / total:5.1f}%  ({nodes[op]} node runs)")


if __name__ == "__main__":
    sys.exit(main())
