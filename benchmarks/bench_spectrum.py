"""Benchmark: the paper's Table 1 methods beside fisher_ref's exact methods, as ratios in one run.

Rows: the bundled MNIST LeNet-5 (1 x 28 x 28, C = 10: a small model, where per-call overhead
matters), a CIFAR-10-shaped VGG (3 x 32 x 32, C = 10; the paper's shallow VGG-16) and an
ImageNet-shaped ResNet (3 x 224 x 224, C = 1000; ResNet-152 on a GPU, a smaller ResNet on the CPU,
said in the output). For each row, on the same model and inputs:

1. time per input of each method for the top-k eigenpairs (k = 1 as OSSA, and k = 20):
   the paper's dense eigendecomposition, Lanczos, Alias+Lanczos, power iteration and Alias+power
   (the matrix applied from the C class gradients, eq. 6; "Alias" draws C/5 classes with Walker's
   alias method), and ours: the exact Gram method, matrix-free Lanczos and matrix-free block
   Lanczos on the backend's Fisher-vector products;
2. each time divided by the time of one full input Jacobian (all C class gradients, batched);
3. accuracy of the approximate methods against the exact spectrum: relative error of lambda_1 and
   of the top-20 eigenvalues, angle of the top eigenvector, change in OSSA fooling rate;
4. throughput of batched OSSA against a per-input loop;
5. the ONNX Runtime backend against the torch backend on the same exported model;
6. peak memory of each method (extra peak resident memory of a fresh subprocess that runs it once on
   one input, over what model and input took; ``torch.cuda.max_memory_allocated`` on a GPU).

Writes Markdown and CSV into ``--out`` (default ``benchmarks/results``); never asserts on time.

    python benchmarks/bench_spectrum.py                 # all three rows, CPU defaults
    python benchmarks/bench_spectrum.py --rows cifar --inputs 4 --repeats 3
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fisher_ref._text import count

HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------------- methods
def _methods(k: int):
    """name -> (family, function(backend, x1, rng) -> (w, V)). x1 is a batch of one input."""
    import fisher_ref as fr
    from fisher_ref import FisherOperator, SampledFisherOperator, top_eigenpairs

    def dense(b, x, rng):
        p, g = b.class_gradients(x)
        G = fr.fisher_matrix(p[0], g[0])
        w, V = np.linalg.eigh(G)
        return w[::-1][:k], V[:, ::-1][:, :k]

    def exact(method):
        return lambda b, x, rng: top_eigenpairs(FisherOperator.from_backend(x, b), k, method=method, rng=rng,
                                                tol=1e-6 if method == "power" else None, maxiter=20000)

    def alias(method):
        return lambda b, x, rng: top_eigenpairs(SampledFisherOperator.from_backend(x, b, rng=rng), k, method=method,
                                                rng=rng, tol=1e-6 if method == "power" else None, maxiter=20000)

    def ours(method, operator):
        def f(b, x, rng):
            w, V = fr.fisher_spectrum(x, b, k=k, method=method, operator=operator, rng=rng)
            return w[0], V[0].reshape(k, -1).T
        return f

    return {
        "dense eigh (paper)": ("paper", dense),
        "Lanczos (paper)": ("paper", exact("lanczos")),
        "Alias+Lanczos (paper)": ("paper", alias("lanczos")),
        "power (paper)": ("paper", exact("power")),
        "Alias+power (paper)": ("paper", alias("power")),
        "Gram, exact (ours)": ("ours", ours("gram", "exact")),
        "matrix-free Lanczos (ours)": ("ours", ours("lanczos", "matrix-free")),
        "matrix-free block Lanczos (ours)": ("ours", ours("block-lanczos", "matrix-free")),
    }


def _time(fn, repeats: int, warmup: bool = True) -> tuple[float, object]:
    out = fn() if warmup else None  # warm-up (and the result)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), out


def peak_memory_mb(row: str, method: str, k: int, args) -> float:
    """Extra peak resident memory (MB) of running ``method`` once on one input, measured in a fresh
    subprocess that builds the same model and input (a forked child of a process whose OpenMP
    threads have run can deadlock); on a GPU, the CUDA allocator's peak instead."""
    cmd = [sys.executable, __file__, "--memory-child", row, method, str(k), "--device", args.device,
           "--vgg-width", str(args.vgg_width), "--seed", str(args.seed)]
    for flag, val in (("--vgg-weights", args.vgg_weights), ("--resnet-depth", args.resnet_depth),
                      ("--resnet-width", args.resnet_width), ("--threads", args.threads)):
        if val is not None:
            cmd += [flag, str(val)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    try:
        return float(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        print(f"  (memory of {method!r} not measured: {out.stderr.strip().splitlines()[-1:]})")
        return float("nan")


def _memory_child(row: str, method: str, k: int, args) -> None:
    """Run one method once on one input and print its extra peak memory in MB."""
    import torch

    from fisher_ref.backends import TorchBackend
    from fisher_ref.validation.memory import reset_peak, resident_kb

    model, shape, _, _ = _row_model(row, args)
    X, _ = _inputs(row, shape, 1, args.seed)
    b = TorchBackend(model, input_shape=shape, device=args.device)
    b.probabilities(X[:1])
    fn = _methods(k)[method][1]
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(b, X[:1], np.random.default_rng(0))
        torch.cuda.synchronize()
        print((torch.cuda.max_memory_allocated() - base) / 2**20)
        return
    reset_peak()
    base = resident_kb("VmRSS")
    fn(b, X[:1], np.random.default_rng(0))
    print((resident_kb("VmHWM") - base) / 1024)


# ----------------------------------------------------------------------------------- rows
def _row_model(row: str, args):
    import torch

    from fisher_ref.backends import torch_models as tm

    if row == "mnist":
        from fisher_ref.backends import bundled_path

        model = tm.lenet5(dropout=0.5)
        label = "LeNet-5 (the bundled one), MNIST shape 1x28x28, C=10"
        shape = (1, 28, 28)
        weights = str(bundled_path("mnist_lenet.pt"))
    elif row == "cifar":
        model = tm.vgg_cifar(width=args.vgg_width)
        label = f"VGG (paper's VGG-16 without conv4-1..conv5-3, width {args.vgg_width:g}), CIFAR-10 shape 3x32x32, C=10"
        shape = (3, 32, 32)
        weights = args.vgg_weights
    else:
        depth = args.resnet_depth or (152 if args.device.startswith("cuda") else 18)
        width = args.resnet_width or (1.0 if args.device.startswith("cuda") else 0.5)
        model = tm.resnet(depth, width=width)
        label = f"ResNet-{depth} (width {width:g}), ImageNet shape 3x224x224, C=1000"
        shape = (3, 224, 224)
        weights = None
    trained = False
    if weights:
        model.load_state_dict(torch.load(weights, map_location="cpu"))
        trained = True
    label += ", trained weights" if trained else ", untrained (seeded random) weights"
    return model, shape, label, trained


def _inputs(row: str, shape, n: int, seed: int) -> tuple[np.ndarray, str]:
    if row == "mnist":
        from fisher_ref.datasets import load_bundled_mnist

        imgs = load_bundled_mnist()[0]
        sel = np.random.default_rng(seed).choice(len(imgs), n, replace=False)
        return imgs[sel], "bundled MNIST test images"
    if row == "cifar":
        try:
            from fisher_ref.datasets import load_cifar10

            imgs, _ = load_cifar10(split="test", limit=n * 50)
            sel = np.random.default_rng(seed).choice(len(imgs), n, replace=False)
            return imgs[sel].transpose(0, 3, 1, 2).astype(np.float64) / 255.0, "CIFAR-10 (JPEG) test images"
        except Exception as exc:  # no data: random images in [0, 1], said in the output
            print(f"  (CIFAR-10 not available: {exc}; using uniform random images)")
    return np.random.default_rng(seed).uniform(0, 1, (n,) + shape), "uniform random images in [0, 1]"


def bench_row(row: str, args) -> dict:

    import fisher_ref as fr
    from fisher_ref.backends import OnnxBackend, TorchBackend
    from fisher_ref.backends.torch import export_onnx

    model, shape, label, trained = _row_model(row, args)
    small = row != "imagenet"
    X, data_label = _inputs(row, shape, args.inputs if small else args.imagenet_inputs, args.seed)
    b = TorchBackend(model, input_shape=shape, device=args.device)
    C = b.probabilities(X[:1]).shape[1]
    d = math.prod(shape)
    print(f"\n== {label}; {count(len(X), 'input')}: {data_label}; device {b.device}")
    skip_dense = d > 20000  # the d x d matrix alone would take d^2 * 8 bytes
    res: dict = {"row": row, "label": label, "data": data_label, "C": C, "d": d, "device": str(b.device),
                 "trained": trained, "methods": [], "k_values": list(args.k)}

    reps = args.repeats if small else args.imagenet_repeats
    t_jac = [_time(lambda: b.class_gradients(X[j:j + 1]), reps)[0] for j in range(len(X))]
    t_jac = float(np.median(t_jac))
    res["jacobian_s"] = t_jac
    print(f"  one full input Jacobian (C = {C} class gradients, batched): {t_jac:.4f} s")

    exact_spec = {}
    for j in range(len(X)):
        w, V = fr.fisher_spectrum(X[j], b, k=max(max(args.k), max(args.imagenet_k)), method="gram", operator="exact")
        exact_spec[j] = (w, V.reshape(len(w), -1).T)

    dense_done: dict = {}
    repeats = args.repeats if small else args.imagenet_repeats
    warm = small
    ks = args.k if small else args.imagenet_k
    res["k_values"] = list(ks)
    for k in sorted(ks, reverse=True):
        for name, (family, fn) in _methods(k).items():
            if any(s and s in name for s in args.skip):
                continue
            if name.startswith("dense") and skip_dense:
                res["methods"].append({"k": k, "method": name, "family": family, "time_s": None,
                                       "note": f"intractable: the dense FIM needs {d * d * 8 / 2**30:.0f} GiB"})
                continue
            if name.startswith("power") and k > 1 and C > 100:
                res["methods"].append({"k": k, "method": name, "family": family, "time_s": None,
                                       "note": "block power iteration for k = 20 not run at C = 1000 (too slow)"})
                continue
            if name.startswith("dense") and k != max(ks) and (max(ks), name) in dense_done:
                # eigh computes every eigenpair: the same run serves every k
                rec = dict(dense_done[(max(ks), name)], k=k)
                res["methods"].append(rec)
                continue
            times, ratios, errs1, errsk, angles = [], [], [], [], []
            reps = 1 if name.startswith("dense") else repeats
            for j in range(len(X)):
                # the machine's load may change during a run: each method is timed right after a
                # Jacobian on the same input, and the ratio of the two is the one reported
                tj, _ = _time(lambda: b.class_gradients(X[j:j + 1]), reps, warmup=False)
                try:
                    t, (w, V) = _time(lambda: fn(b, X[j:j + 1], np.random.default_rng(args.seed + j)), reps,
                                      warmup=warm and not name.startswith("dense"))
                except fr.NoConvergence as exc:
                    t, (w, V) = float("nan"), (exc.eigenvalues, exc.eigenvectors)
                times.append(t)
                ratios.append(t / tj)
                w_t, V_t = exact_spec[j]
                errs1.append(abs(w[0] - w_t[0]) / w_t[0])
                errsk.append(float(np.linalg.norm(w[:k] - w_t[:k]) / np.linalg.norm(w_t[:k])))
                angles.append(float(np.degrees(np.arccos(min(1.0, abs(V[:, 0] @ V_t[:, 0]))))))
            t = float(np.nanmedian(times))
            mem = peak_memory_mb(row, name, k, args) if args.memory else None
            rec = {"k": k, "method": name, "family": family, "time_s": t, "ratio_to_jacobian": float(np.nanmedian(ratios)),
                   "rel_err_top1": float(np.max(errs1)), "rel_err_topk": float(np.max(errsk)),
                   "angle_deg": float(np.max(angles)), "peak_mem_mb": mem}
            res["methods"].append(rec)
            if name.startswith("dense"):
                dense_done[(k, name)] = rec
            print(f"  k={k:2d} {name:34s} {t:9.4f} s  {rec['ratio_to_jacobian']:7.3f} x Jacobian  "
                  f"err(l1) {rec['rel_err_top1']:.1e}  err(top-{k}) {rec['rel_err_topk']:.1e}  "
                  f"angle {rec['angle_deg']:.2g} deg" + (f"  mem {mem:.0f} MB" if mem is not None else ""))

    # OSSA fooling rate with the approximate (alias) direction against the exact one
    eps = args.epsilon
    exact_res = fr.ossa(X, b, epsilon=eps, method="gram", operator="exact")
    alias_res = fr.ossa(X, b, epsilon=eps, method="lanczos", operator="sampled", rng=args.seed)
    res["ossa_fooling"] = {"epsilon": eps, "exact": exact_res.fooling_rate, "alias": alias_res.fooling_rate}
    print(f"  OSSA fooling rate at epsilon {eps:g}: exact {exact_res.fooling_rate:.1%}, "
          f"Alias+Lanczos {alias_res.fooling_rate:.1%} ({count(len(X), 'input')})")

    # batched OSSA vs a per-input loop
    nb = (args.ossa_batch * (4 if row == "mnist" else 1)) if small else min(args.ossa_batch, 4)
    Xb = np.concatenate([X] * (nb // len(X) + 1))[:nb]
    t_batch, _ = _time(lambda: fr.ossa(Xb, b, epsilon=eps), 1)
    t_loop, _ = _time(lambda: [fr.ossa(x, b, epsilon=eps) for x in Xb], 1)
    res["ossa_throughput"] = {"n": nb, "batched_per_s": nb / t_batch, "loop_per_s": nb / t_loop,
                              "speedup": t_loop / t_batch}
    print(f"  batched OSSA on {count(nb, 'input')}: {nb / t_batch:.1f} inputs/s, per-input loop {nb / t_loop:.1f} inputs/s "
          f"({t_loop / t_batch:.1f}x)")

    # the ONNX Runtime backend on the same model
    if not args.no_onnx:
        ob = OnnxBackend(export_onnx(model, shape), batch_size=max(len(X), nb),
                         providers=["CUDAExecutionProvider", "CPUExecutionProvider"] if args.device.startswith("cuda") else None)
        v20 = np.random.default_rng(0).standard_normal((1, 20) + shape)
        cmp = {}
        for what, f_t, f_o in [
            ("Jacobian (all class gradients)", lambda: b.class_gradients(X[:1]), lambda: ob.class_gradients(X[:1])),
            ("Fisher-vector products, block of 20", lambda: b.fisher_vector_product(X[:1], v20),
             lambda: ob.fisher_vector_product(X[:1], v20)),
            ("top-20, auto", lambda: fr.fisher_spectrum(X[:1], b, k=20), lambda: fr.fisher_spectrum(X[:1], ob, k=20)),
            ("batched OSSA", lambda: fr.ossa(Xb, b, epsilon=eps), lambda: fr.ossa(Xb, ob, epsilon=eps)),
        ]:
            tt, _ = _time(f_t, reps)
            to, _ = _time(f_o, reps)
            cmp[what] = {"torch_s": tt, "onnx_s": to, "ratio": to / tt}
            print(f"  ONNX vs torch, {what:36s}: torch {tt:.4f} s, ONNX {to:.4f} s, ratio {to / tt:.2f}")
        w_o, _ = fr.fisher_spectrum(X, ob, k=20, method="gram")
        w_t = np.stack([exact_spec[j][0][:20] for j in range(len(X))])
        cmp["top-20 eigenvalue agreement (max rel)"] = float(np.max(np.abs(w_o - w_t)) / np.max(w_t))
        res["onnx_vs_torch"] = cmp
    return res


# ----------------------------------------------------------------------------------- output
def write(results: list[dict], out: Path, machine: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "spectrum_methods.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "C", "d", "device", "k", "method", "family", "time_s", "ratio_to_jacobian",
                    "rel_err_top1", "rel_err_topk", "angle_deg", "peak_mem_mb", "note"])
        for r in results:
            for m in r["methods"]:
                w.writerow([r["row"], r["C"], r["d"], r["device"], m["k"], m["method"], m["family"], m.get("time_s"),
                            m.get("ratio_to_jacobian"), m.get("rel_err_top1"), m.get("rel_err_topk"),
                            m.get("angle_deg"), m.get("peak_mem_mb"), m.get("note", "")])
    lines = ["# Spectrum benchmark\n", f"Machine: {machine}\n",
             "Times are medians per input; ratios are to one full input Jacobian (all C class gradients, "
             "batched) measured in the same run on the same model and inputs.\n"]
    for r in results:
        lines += [f"\n## {r['label']}\n", f"Inputs: {r['data']}; device {r['device']}; one input Jacobian "
                  f"{r['jacobian_s']:.4f} s.\n",
                  "\n| k | method | time (s) | / Jacobian | rel. err. lambda_1 | rel. err. top-k | angle v1 (deg) | peak mem (MB) |",
                  "|---|---|---|---|---|---|---|---|"]
        for m in r["methods"]:
            if m.get("time_s") is None:
                lines.append(f"| {m['k']} | {m['method']} | - | - | - | - | - | {m['note']} |")
                continue
            mem = "-" if m.get("peak_mem_mb") is None else f"{m['peak_mem_mb']:.0f}"
            lines.append(f"| {m['k']} | {m['method']} | {m['time_s']:.4f} | {m['ratio_to_jacobian']:.3f} | "
                         f"{m['rel_err_top1']:.1e} | {m['rel_err_topk']:.1e} | {m['angle_deg']:.2g} | {mem} |")
        o = r["ossa_fooling"]
        t = r["ossa_throughput"]
        lines += [f"\nOSSA fooling rate at epsilon {o['epsilon']:g}: exact {o['exact']:.1%}, "
                  f"Alias+Lanczos {o['alias']:.1%}.\n",
                  f"Batched OSSA on {count(t['n'], 'input')}: {t['batched_per_s']:.2f} inputs/s; per-input loop "
                  f"{t['loop_per_s']:.2f} inputs/s; speed-up {t['speedup']:.1f}x.\n"]
        if "onnx_vs_torch" in r:
            lines += ["\n| ONNX Runtime vs torch | torch (s) | ONNX (s) | ONNX / torch |", "|---|---|---|---|"]
            for what, c in r["onnx_vs_torch"].items():
                if isinstance(c, dict):
                    lines.append(f"| {what} | {c['torch_s']:.4f} | {c['onnx_s']:.4f} | {c['ratio']:.2f} |")
            lines.append(f"\nTop-20 eigenvalues, ONNX vs torch: max relative difference "
                         f"{r['onnx_vs_torch']['top-20 eigenvalue agreement (max rel)']:.1e}.\n")
        lines += _targets(r)
    (out / "spectrum_methods.md").write_text("\n".join(lines) + "\n")
    (out / "spectrum_methods.json").write_text(json.dumps({"machine": machine, "results": results}, indent=1))


def _targets(r: dict) -> list[str]:
    by = {(m["k"], m["method"]): m for m in r["methods"] if m.get("time_s") is not None}
    k = max(r["k_values"])
    gram = by.get((k, "Gram, exact (ours)"))
    mf = [by.get((k, n)) for n in ("matrix-free Lanczos (ours)", "matrix-free block Lanczos (ours)")]
    best = min([m for m in [gram] + mf if m], key=lambda m: m["time_s"])
    out = ["\nTargets:\n"]
    if r["C"] <= 100:
        dense = by.get((k, "dense eigh (paper)"))
        out.append(f"- exact top-{k} ({best['method']}) / Jacobian = {best['ratio_to_jacobian']:.2f} (target <= 1.2)")
        if dense:
            out.append(f"- dense eigendecomposition / ours = {dense['time_s'] / best['time_s']:.0f}x (target >= 50x)")
    else:
        alias = by.get((k, "Alias+Lanczos (paper)"))
        out.append(f"- exact top-{k} ({best['method']}) / Jacobian = {best['ratio_to_jacobian']:.3f} (target <= 0.3)")
        if alias:
            out.append(f"- ours / Alias+Lanczos = {best['time_s'] / alias['time_s']:.2f} (target <= 2)")
    out.append(f"- batched OSSA / per-input loop = {r['ossa_throughput']['speedup']:.1f}x (target >= 10x)")
    if "onnx_vs_torch" in r:
        o = r["onnx_vs_torch"]["top-20, auto"]["ratio"]
        out.append(f"- ONNX / torch (top-20) = {o:.2f} (target <= 1.5)")
    return out


def setup_machine(threads: int | None, device: str) -> str:
    """Set torch's CPU threads (None: all cores), print and return the description of the machine."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    dev = torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or platform.machine()
    machine = (f"{dev}; {os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
               f"numpy {np.__version__}, Python {platform.python_version()}")
    print(f"machine: {machine}")
    return machine


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="mnist,cifar,imagenet")
    ap.add_argument("--inputs", type=int, default=3, help="inputs per row")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--imagenet-inputs", type=int, default=1, help="inputs of the ImageNet-shaped row")
    ap.add_argument("--imagenet-repeats", type=int, default=1)
    ap.add_argument("--imagenet-k", type=int, nargs="+", default=[20], help="k values of the ImageNet-shaped row")
    ap.add_argument("--k", type=int, nargs="+", default=[1, 20])
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--ossa-batch", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    ap.add_argument("--vgg-width", type=float, default=1.0)
    ap.add_argument("--vgg-weights", default=None, help="state_dict of a trained vgg_cifar")
    ap.add_argument("--resnet-depth", type=int, default=None)
    ap.add_argument("--resnet-width", type=float, default=None)
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--skip", type=lambda s: [t.strip() for t in s.split(",")], default=[],
                    help="comma-separated substrings: methods whose name contains one are not run")
    ap.add_argument("--no-memory", dest="memory", action="store_false")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--memory-child", nargs=3, metavar=("ROW", "METHOD", "K"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    import torch

    if args.memory_child:
        if args.threads:
            torch.set_num_threads(args.threads)
        row, method, k = args.memory_child
        _memory_child(row, method, int(k), args)
        return 0

    return run_rows(bench_row, write, args, "spectrum_methods.md, .csv and .json")


def run_rows(bench_row, write, args, written: str) -> int:
    """Describe the machine, run ``bench_row(row, args)`` for each of ``args.rows``, write the results."""
    machine = setup_machine(args.threads, args.device)
    results = [bench_row(row.strip(), args) for row in args.rows.split(",") if row.strip()]
    write(results, Path(args.out), machine)
    print(f"\nwrote {args.out}/{written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
