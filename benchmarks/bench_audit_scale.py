"""The audit at production size: seconds and peak memory per input against one input's Jacobian.

For each ONNX classifier given (e.g. torchvision ResNet-18 and MobileNetV2, timm ViT-Tiny at
3x224x224 with 1000 classes, seeded random weights), in separate child processes so that each peak
resident memory is its own:

* the unavoidable reference: one input's Jacobian, all C class gradients
  (``OnnxBackend.class_gradients``, C reverse passes batched, under the same ``--max-memory`` as
  the audit), its seconds and peak memory (the C x d float32 result itself included);
* ``fisher_ref.audit.audit`` on ``--n`` inputs (top-k spectrum, OSSA and FGM at four budgets, the
  least-perturbation search), its seconds per input and peak memory, with ``--max-memory``.

It prints the ratio audit seconds per input / Jacobian seconds (the issue's target: at most 1) and
both peaks (target: the audit's at most 2 GB).

    python benchmarks/bench_audit_scale.py resnet18.onnx mobilenet_v2.onnx vit_tiny.onnx [--n 2]
        [--max-memory 2G] [--out benchmarks/results/audit_scale.txt]

Make the models with torchvision / timm installed, e.g.
``export_onnx(torchvision.models.resnet18(weights=None), (3, 224, 224), "resnet18.onnx")``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _peak_gb() -> float:
    """This process's peak resident memory since its exec (VmHWM: not ru_maxrss, which Linux
    seeds with the parent's size at exec)."""
    from fisher_ref.validation.memory import resident_kb

    return resident_kb("VmHWM") / 2**20


def measure_jacobian(model: str, data: str, max_memory: str) -> dict:
    from fisher_ref.audit._config import parse_memory
    from fisher_ref.backends import OnnxBackend

    b = OnnxBackend(model, max_memory=parse_memory(max_memory))
    x = np.load(data)[:1]
    b.loss_gradient(x, np.zeros(1, dtype=np.int64))  # sessions built before the clock starts
    t0 = time.perf_counter()
    _, g = b.class_gradients(x)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_gb": _peak_gb(), "n_classes": int(g.shape[1]), "d": int(np.prod(g.shape[2:])),
            "batch_size": b.batch_size}


def measure_audit(model: str, data: str, n: int, max_memory: str) -> dict:
    from fisher_ref.audit import audit

    lines: list = []
    with tempfile.TemporaryDirectory(prefix="fisher_ref_scale_") as out:
        t0 = time.perf_counter()
        audit(model, data, out=Path(out) / "a", limit=n, report=False, progress=False, max_memory=max_memory,
              log=lines.append)
        seconds = time.perf_counter() - t0
        summary = json.loads((Path(out) / "a" / "summary.json").read_text())
    return {"seconds_per_input": seconds / n, "peak_gb": _peak_gb(), "k": summary["config"]["k"],
            "batch_size": summary["config"]["batch_size"], "log": lines}


def _child(kind: str, *args) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} of {args[0]} failed (exit status {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", help="ONNX classifiers (input 3x224x224)")
    ap.add_argument("--n", type=int, default=2, help="inputs the audit takes (default 2)")
    ap.add_argument("--max-memory", default="2G", help="the audit's --max-memory (default 2G)")
    ap.add_argument("--out", help="also write the table here")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, model, data, *rest = args.child
        res = (measure_jacobian(model, data, rest[0]) if kind == "jacobian"
               else measure_audit(model, data, int(rest[0]), rest[1]))
        print(json.dumps(res))
        return 0
    if not args.models:
        ap.error("give one or more ONNX models")
    if args.n < 1:
        ap.error(f"--n must be a positive integer, got {args.n}")
    lines = [f"audit at scale: {platform.machine()}, {os.cpu_count()} cores, audit of {args.n} inputs with "
             f"--max-memory {args.max_memory}, {time.strftime('%Y-%m-%d')}",
             f"{'model':<22} {'C':>5} {'d':>7} {'Jacobian s':>10} {'peak GB':>8} {'rows/run':>8} {'audit s/input':>13} "
             f"{'ratio':>6} {'peak GB':>8} {'k':>3} {'rows/run':>8}"]
    print("\n".join(lines), flush=True)
    for model in args.models:
        with tempfile.TemporaryDirectory(prefix="fisher_ref_scale_") as tmp:
            data = Path(tmp) / "x.npy"
            from fisher_ref.backends import OnnxBackend

            shape = OnnxBackend(model).input_shape
            np.save(data, np.random.default_rng(0).random((args.n, *shape), dtype=np.float32))
            jac = _child("jacobian", model, data, args.max_memory)
            aud = _child("audit", model, data, args.n, args.max_memory)
        line = (f"{Path(model).stem:<22} {jac['n_classes']:>5} {jac['d']:>7} {jac['seconds']:>10.1f} "
                f"{jac['peak_gb']:>8.2f} {jac['batch_size']:>8} {aud['seconds_per_input']:>13.1f} "
                f"{aud['seconds_per_input'] / jac['seconds']:>6.2f} {aud['peak_gb']:>8.2f} {aud['k']:>3} "
                f"{aud['batch_size']:>8}")
        lines.append(line)
        print(line, flush=True)
    lines.append("ratio: audit seconds per input / one input's Jacobian (all C class gradients); peak GB: the "
                 "resident memory of each child process")
    print(lines[-1])
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
