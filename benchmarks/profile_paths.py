"""Where each millisecond of ``ossa`` and of one audit shard goes (issue 13), by cProfile.

Two profiles: batched ``ossa`` on the bundled LeNet-5 (TorchBackend, 32 MNIST test images,
epsilon 1, repeated), and ``fisher-ref audit`` on the bundled ONNX model with ``--limit 100
--shard-size 100`` (one shard; no report), after a two-input audit that does the imports. The own time (tottime) of every profiled function is
put into one of: backend compute (torch / ONNX Runtime kernels), conversions (tensors to and from
NumPy, dtype casts), NumPy/SciPy, fisher_ref validation (``_validation`` and the checks of the
public backend methods), fisher_ref other Python, everything else (Python, import machinery,
Dask). Prints the totals per category and the top functions.

    python benchmarks/profile_paths.py [--what ossa,audit] [--threads 1]

Run it from another checkout (``PYTHONPATH=/path/to/old/checkout``) for the "before" profile.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CATEGORIES = ("backend compute", "conversions", "NumPy/SciPy", "fisher_ref validation", "fisher_ref other",
              "other Python")
_CONVERSIONS = ("torch.tensor", "torch.as_tensor", "'numpy' of", "'to' of", "'cpu' of", "'astype' of",
                "'clone' of", "'contiguous' of", "from_numpy")


def category(key: tuple) -> str:
    """The category of one pstats entry ``(filename, line, function name)``."""
    filename, _, name = key
    if filename == "~":  # a builtin: classify by its name
        if any(c in name for c in _CONVERSIONS):
            return "conversions"
        if "torch" in name or "onnxruntime" in name or "EngineBase" in name:
            return "backend compute"
        if "numpy" in name or "scipy" in name or "ufunc" in name or "_umath_linalg" in name:
            return "NumPy/SciPy"
        return "other Python"
    if "/numpy/" in filename or "/scipy/" in filename or "threadpoolctl" in filename:
        return "NumPy/SciPy"
    if "onnxruntime" in filename and name == "run":
        return "backend compute"
    if "fisher_ref" in filename or "/backends/" in filename:
        if filename.endswith("_validation.py") or (filename.endswith("_backend.py") and name in (
                "probabilities", "class_gradients", "loss_gradient", "fisher_vector_product", "as_batch",
                "_check_probs")):
            return "fisher_ref validation"
        return "fisher_ref other"
    return "other Python"


def summarise(prof: cProfile.Profile, total_s: float, per: int, top: int = 12) -> list[str]:
    st = pstats.Stats(prof)
    sums = dict.fromkeys(CATEGORIES, 0.0)
    rows = []
    for key, (cc, nc, tt, ct, callers) in st.stats.items():
        cat = category(key)
        sums[cat] += tt
        rows.append((tt, cat, key, nc))
    measured = sum(sums.values())
    lines = [f"wall {total_s * 1e3 / per:.1f} ms per run, profiled own time {measured * 1e3 / per:.1f} ms per run",
             "", "| category | ms per run | share |", "|---|---|---|"]
    lines += [f"| {c} | {sums[c] * 1e3 / per:.2f} | {sums[c] / measured:.1%} |" for c in CATEGORIES]
    lines += ["", "| top functions (own time) | category | calls per run | ms per run |", "|---|---|---|---|"]
    for tt, cat, key, nc in sorted(rows, reverse=True)[:top]:
        where = key[2] if key[0] == "~" else f"{Path(key[0]).name}:{key[1]}({key[2]})"
        lines.append(f"| `{where}` | {cat} | {nc / per:.0f} | {tt * 1e3 / per:.2f} |")
    return lines


def profile_ossa(repeats: int) -> list[str]:
    import torch

    import fisher_ref as fr
    from fisher_ref.backends import TorchBackend, bundled_path, torch_models
    from fisher_ref.datasets import load_bundled_mnist

    net = torch_models.lenet5(dropout=0.5)
    net.load_state_dict(torch.load(str(bundled_path("mnist_lenet.pt")), map_location="cpu"))
    b = TorchBackend(net, input_shape=(1, 28, 28), device="cpu")
    X = load_bundled_mnist()[0][:32]
    fr.ossa(X, b, epsilon=1.0)  # warm-up
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(repeats):
        fr.ossa(X, b, epsilon=1.0)
    prof.disable()
    return summarise(prof, time.perf_counter() - t0, repeats)


def profile_audit() -> list[str]:
    from fisher_ref.__main__ import main as cli

    with tempfile.TemporaryDirectory() as tmp:
        # a small audit first, so that the profile holds the shard's work and not the imports
        cli(["audit", "--limit", "2", "--shard-size", "2", "--no-report", "--no-progress", "--out", str(Path(tmp) / "w")])
        args = ["audit", "--limit", "100", "--shard-size", "100", "--no-report", "--no-progress", "--out",
                str(Path(tmp) / "out")]
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        rc = cli(args)
        prof.disable()
        if rc != 0:
            raise SystemExit(f"fisher-ref audit exited with {rc}")
        return summarise(prof, time.perf_counter() - t0, 1, top=15)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--what", default="ossa,audit")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    import fisher_ref

    print(f"fisher_ref from {Path(fisher_ref.__file__).parent}; numpy {np.__version__}")
    for what in args.what.split(","):
        print(f"\n### {what}\n")
        lines = profile_ossa(args.repeats) if what == "ossa" else profile_audit()
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
