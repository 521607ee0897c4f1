"""Benchmark: every attack and spectrum path beside the one pass it cannot avoid (issue 13).

For each row (the bundled MNIST LeNet-5, the CIFAR-10 VGG of ``paper_results/models``, an
ImageNet-shaped ResNet with C = 1000 and seeded random weights), on one batch of inputs, in ONE
run whose measurements are interleaved round by round (so a change of the machine's load hits
every column alike):

* the unavoidable work, in plain torch on the backend's own float32 model: one batched Jacobian
  of the logits (C backward passes: the faster of ``torch.func.vmap`` over the VJP and a loop on
  the retained graph), one batched forward pass, one batched forward+backward of the loss;
* the library paths: ``ossa`` (batched and, on the small rows, a per-input loop), ``fgm`` (its
  gradient ``fgm_direction`` alone, and the whole attack with its success test), a ``bim`` step,
  exact top-20 ``fisher_spectrum`` (float64 and float32 Gram), the backend's class gradients,
  forward pass and loss gradient;
* Foolbox 3's L2 FGM and torchattacks' 1-step PGD-L2 on the same model and batch, when installed
  (a benchmark-only environment: they are no dependencies of fisher_ref);
* the backend calls of ``least_perturbation`` (forward passes per input and budget, counted by a
  wrapping backend, against the budgets its search tries);
* ONNX Runtime against torch on the exported model (class gradients, a block of 20
  Fisher-vector products, top-20);
* accuracy against a float64 backend on the same model: it must stay at the float32 floor.

Prints every target of issue 13 as measured / target with "met" or "missed by x%", and writes
``attacks.md`` and ``attacks.json`` into ``--out``. Never asserts on time.

    python benchmarks/bench_attacks.py                       # all rows
    python benchmarks/bench_attacks.py --rows mnist --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_spectrum as bs  # noqa: E402  (the rows, inputs and timing helper of the spectrum benchmark)

BATCH = {"mnist": 32, "cifar": 16, "imagenet": 1}
EPSILON = {"mnist": 1.0, "cifar": 0.5, "imagenet": 0.5}
BIM_STEPS = 10


# ----------------------------------------------------------------------------------- floors
def floors(model, xt, yt, C: int, loop_only: bool) -> dict:
    """The unavoidable work in plain torch: name -> callable."""
    import torch

    def jac_vmap():
        s, fn = torch.func.vjp(model, xt)
        eye = torch.eye(C, dtype=s.dtype).unsqueeze(1).expand(C, xt.shape[0], C)
        return torch.cat([torch.func.vmap(fn)(eye[i:i + 50])[0] for i in range(0, C, 50)])

    def jac_loop():
        x_ = xt.clone().requires_grad_(True)
        s = model(x_)
        e = torch.zeros_like(s)
        out = []
        for i in range(C):
            e.zero_()
            e[:, i] = 1
            out.append(torch.autograd.grad(s, x_, e, retain_graph=i < C - 1)[0])
        return out

    def forward():
        with torch.inference_mode():
            return model(xt)

    def fwd_bwd():
        x_ = xt.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(x_), yt, reduction="sum")
        return torch.autograd.grad(loss, x_)[0]

    out = {"floor: Jacobian (loop)": jac_loop, "floor: forward": forward, "floor: forward+backward": fwd_bwd}
    if not loop_only:
        out["floor: Jacobian (vmap)"] = jac_vmap
    return out


def library(b, X, y, row: str, C: int) -> dict:
    """The library paths: name -> (callable, divisor of its time: n_steps for a BIM step)."""
    import fisher_ref as fr

    eps = EPSILON[row]
    out = {
        "ossa (batched)": (lambda: fr.ossa(X, b, epsilon=eps), 1),
        "fgm direction (the gradient)": (lambda: fr.fgm_direction(X, b, labels=y), 1),
        "fgm (with its success test)": (lambda: fr.fgm(X, b, epsilon=eps, labels=y), 1),
        "bim, one step": (lambda: fr.bim(X, b, epsilon=eps, step_size=eps / 4, n_steps=BIM_STEPS, labels=y),
                          BIM_STEPS),
        "backend: forward": (lambda: b.probabilities(X), 1),
        "backend: loss gradient": (lambda: b.loss_gradient(X, y), 1),
    }
    if C <= 100:
        out["backend: class gradients"] = (lambda: b.class_gradients(X), 1)
        out["top-20 exact (Gram, float64)"] = (lambda: fr.fisher_spectrum(x=X, backend=b, k=20, method="gram"), 1)
        out["top-20 exact (Gram, float32)"] = (
            lambda: fr.fisher_spectrum(x=X, backend=b, k=20, method="gram", precision="float32"), 1)
        out["ossa (per-input loop)"] = (lambda: [fr.ossa(x, b, epsilon=eps) for x in X], 1)
    else:
        out["top-1 (auto: matrix-free Lanczos)"] = (lambda: fr.fisher_spectrum(x=X, backend=b, k=1), 1)
    return out


def contenders(model, xt, yt, eps: float) -> tuple[dict, list[str]]:
    """Foolbox 3 L2 FGM and torchattacks 1-step PGD-L2 on the same model and batch, if installed."""
    out, notes = {}, []
    try:
        import foolbox as fb

        fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0))
        attack = fb.attacks.L2FastGradientAttack()
        out["Foolbox 3 L2 FGM (with its success test)"] = lambda: attack(fmodel, xt, yt, epsilons=eps)
    except ImportError as exc:
        notes.append(f"Foolbox column skipped: {exc} (install foolbox and eagerpy in a benchmark environment)")
    try:
        import torchattacks

        pgd = torchattacks.PGDL2(model, eps=eps, alpha=eps, steps=1, random_start=False)
        out["torchattacks PGD-L2, 1 step (no success test)"] = lambda: pgd(xt, yt)
    except ImportError as exc:
        notes.append(f"torchattacks column skipped: {exc} (install torchattacks in a benchmark environment)")
    return out, notes


#: A callable faster than this is run twice in each round and the second run is timed: the first
#: absorbs what the previous callable left behind (measured: a plain forward pass right after the
#: C backward passes of a Jacobian ran 3-4x slower than on its own: freed memory, cold caches).
WARM_BELOW_S = 2.0


def interleaved(fns: dict, repeats: int, n: int) -> dict:
    """Median time per input of each callable, the callables taking turns in every round."""
    for f, _ in fns.values():
        f()  # warm-up
    ts = {k: [] for k in fns}
    for _ in range(repeats):
        for k, (f, div) in fns.items():
            t = bs._time(f, 1, warmup=False)[0]
            if t < WARM_BELOW_S:
                t = bs._time(f, 1, warmup=False)[0]
            ts[k].append(t / (n * div))
    return {k: float(np.median(v)) for k, v in ts.items()}


# ----------------------------------------------------------------------------------- counts
def search_counts(b, X, y, row: str) -> dict:
    """Backend calls of least_perturbation (OSSA and FGM), counted by a wrapping backend, against
    the budgets its search tries (the grid up to the first success, then the bisection steps)."""
    import fisher_ref as fr
    from fisher_ref.attacks._search import N_SCAN_ONE_STEP

    out = {}
    for attack, direction in (("ossa", fr.ossa_direction), ("fgm", fr.fgm_direction)):
        cd = _Counting(b)
        direction(X, cd, **({"labels": y} if attack == "fgm" else {}))  # what the direction alone costs
        cb = _Counting(b)
        lp = fr.least_perturbation(x=X, backend=cb, attack=attack, labels=y, tol=1e-3)
        tried = _budgets_tried(lp, 0.0, 6.0, 1e-3, N_SCAN_ONE_STEP)
        out[attack] = {"forward_rows": cb.rows, "forward_calls": cb.calls, "budgets_tried": tried,
                       "direction_rows": cd.rows, "grad_calls": cb.grad_calls,
                       "rows_per_budget": (cb.rows - cd.rows) / max(tried, 1), "found": int(np.isfinite(lp).sum())}
    return out


def _budgets_tried(lp: np.ndarray, lo: float, hi: float, tol: float, m: int) -> int:
    grid = lo + (hi - lo) * np.arange(1, m + 1) / m
    grid[-1] = hi
    steps, width = 0, (hi - lo) / m
    while width > tol:
        width, steps = width / 2, steps + 1
    found = np.isfinite(lp) & (lp > lo)
    first = np.searchsorted(grid, lp[found] - 1e-12, side="left")
    return int((first + 1 + steps).sum() + m * np.sum(~np.isfinite(lp)))


def _counting_class():
    from fisher_ref import Backend

    class Counting(Backend):
        """Delegates to ``inner`` and counts the forward rows and calls and the gradient calls."""

        def __init__(self, inner):
            super().__init__(inner.input_shape)
            self.inner, self.capabilities, self.dtype = inner, inner.capabilities, inner.dtype
            self.n_classes = inner.n_classes
            self.rows = self.calls = self.grad_calls = 0

        def _probabilities(self, x):
            self.rows, self.calls = self.rows + x.shape[0], self.calls + 1
            return self.inner.probabilities(x)

        def _class_gradients(self, x, classes):
            self.grad_calls += 1
            return self.inner.class_gradients(x, classes)

        def _loss_gradient(self, x, labels):
            self.grad_calls += 1
            return self.inner.loss_gradient(x, labels)

        def _fisher_vector_product(self, x, v):
            return self.inner.fisher_vector_product(x, v)

    return Counting


def _Counting(inner):
    return _counting_class()(inner)


# ----------------------------------------------------------------------------------- accuracy
def accuracy(model, b, X, y, row: str, C: int) -> dict:
    """Errors of the float32 paths against a float64 backend on the same model (the float32 floor)."""
    import torch

    import fisher_ref as fr
    from fisher_ref.backends import TorchBackend

    ref = TorchBackend(model, input_shape=b.input_shape, device="cpu", dtype=torch.float64)
    eps = EPSILON[row]
    k = 20 if C <= 100 else 1
    out = {}
    w_ref, _ = fr.fisher_spectrum(x=X, backend=ref, k=k)
    top = w_ref[:, :1]
    for name, kw in (("top-k, float64 Gram (the float32 floor)", {}), ("top-k, float32 Gram", {"precision": "float32"})):
        if C > 100 and kw:
            continue
        w, _ = fr.fisher_spectrum(x=X, backend=b, k=k, **kw)
        out[name] = float(np.max(np.abs(w - w_ref) / top))
    r, r_ref = fr.ossa(X, b, epsilon=eps), fr.ossa(X, ref, epsilon=eps)
    out["ossa lambda_1 (rel.)"] = float(np.max(np.abs(r.eigenvalue - r_ref.eigenvalue) / r_ref.eigenvalue))
    out["ossa direction (deg)"] = _max_angle(r.eigenvector, r_ref.eigenvector)
    out["ossa success agreement"] = float(np.mean(r.success == r_ref.success))
    out["fgm direction (deg)"] = _max_angle(fr.fgm_direction(X, b, labels=y), fr.fgm_direction(X, ref, labels=y))
    return out


def _max_angle(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    c = np.abs(np.sum(a * b, axis=1)) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(np.degrees(np.arccos(np.clip(c, 0, 1))).max())


# ----------------------------------------------------------------------------------- ONNX
def onnx_ratios(model, b, X, repeats: int, C: int) -> dict:
    """ONNX Runtime / torch on the exported model (report only: the ONNX caching is later work)."""
    import fisher_ref as fr
    from fisher_ref.backends import OnnxBackend
    from fisher_ref.backends.torch import export_onnx

    ob = OnnxBackend(export_onnx(model, b.input_shape), batch_size=len(X))
    x1 = X[:1]
    v20 = np.random.default_rng(0).standard_normal((1, 20) + b.input_shape)
    pairs = {"Fisher-vector products, block of 20": (lambda: b.fisher_vector_product(x1, v20),
                                                    lambda: ob.fisher_vector_product(x1, v20)),
             "top-20, auto": (lambda: fr.fisher_spectrum(x=x1, backend=b, k=20),
                              lambda: fr.fisher_spectrum(x=x1, backend=ob, k=20))}
    if C <= 100:
        pairs = {"class gradients (batch)": (lambda: b.class_gradients(X), lambda: ob.class_gradients(X)), **pairs}
    fns = {}
    for what, (ft, fo) in pairs.items():
        fns[(what, "torch")], fns[(what, "onnx")] = (ft, 1), (fo, 1)
    t = interleaved(fns, repeats, 1)
    return {what: {"torch_s": t[(what, "torch")], "onnx_s": t[(what, "onnx")],
                   "ratio": t[(what, "onnx")] / t[(what, "torch")]} for what in pairs}


# ----------------------------------------------------------------------------------- rows
def bench_row(row: str, args) -> dict:
    import torch

    from fisher_ref.backends import TorchBackend

    model, shape, label, _ = bs._row_model(row, args)
    n = args.batch or BATCH[row]
    X, data = bs._inputs(row, shape, n, args.seed)
    b = TorchBackend(model, input_shape=shape, device="cpu")
    p = b.probabilities(X)
    C, y = p.shape[1], p.argmax(axis=1)
    print(f"\n== {label}; batch of {n}: {data}")
    xt = torch.tensor(X, dtype=b.torch_dtype)
    yt = torch.as_tensor(y)
    fns = {k: (f, 1) for k, f in floors(b.model, xt, yt, C, loop_only=C > 100).items()}
    fns.update(library(b, X, y, row, C))
    extra, notes = contenders(b.model, xt, yt, EPSILON[row])
    fns.update({k: (f, 1) for k, f in extra.items()})
    reps = args.repeats if C <= 100 else 1
    times = interleaved(fns, reps, n)
    for note in notes:
        print("  " + note)
    for k, t in times.items():
        print(f"  {k:48s} {t * 1e3:10.3f} ms per input")
    res = {"row": row, "label": label, "data": data, "n": n, "C": C, "times_s": times, "notes": notes,
           "counts": search_counts(b, X, y, row), "accuracy": accuracy(model, b, X, y, row, C)}
    if not args.no_onnx:
        res["onnx"] = onnx_ratios(model, b, X, reps, C)
    res["targets"] = targets(res)
    for line in _report_lines(res):
        print("  " + line)
    return res


def _verdict(measured: float, target: float) -> str:
    return "met" if measured <= target else f"missed by {100 * (measured / target - 1):.0f}%"


def targets(r: dict) -> list[dict]:
    """Issue 13's targets for one row: (what, measured, target, verdict)."""
    t = r["times_s"]
    jac = min(v for k, v in t.items() if k.startswith("floor: Jacobian"))
    fwd, fb = t["floor: forward"], t["floor: forward+backward"]
    out = []

    def add(what, measured, target):
        out.append({"what": what, "measured": measured, "target": target, "verdict": _verdict(measured, target)})

    if r["C"] <= 100:
        add("ossa batched / (Jacobian + forward)", t["ossa (batched)"] / (jac + fwd), 1.15)
        add("top-20 exact (Gram, float64) / Jacobian", t["top-20 exact (Gram, float64)"] / jac, 1.1)
        add("top-20 exact (Gram, float32) / Jacobian", t["top-20 exact (Gram, float32)"] / jac, 1.1)
    else:
        add("ossa batched (top-1 matrix-free + sign test) / Jacobian", t["ossa (batched)"] / jac, 0.15)
    add("fgm direction (its gradient; also least_perturbation's) / forward+backward",
        t["fgm direction (the gradient)"] / fb, 1.15)
    add("fgm with its success test / (forward+backward + forward)", t["fgm (with its success test)"] / (fb + fwd), 1.15)
    add("bim, one step / forward+backward", t["bim, one step"] / fb, 1.15)
    fool = t.get("Foolbox 3 L2 FGM (with its success test)")
    if fool:
        add("fgm with its success test / Foolbox 3 L2 FGM", t["fgm (with its success test)"] / fool, 1.0)
    ta = t.get("torchattacks PGD-L2, 1 step (no success test)")
    if ta:
        add("fgm direction / torchattacks 1-step PGD-L2", t["fgm direction (the gradient)"] / ta, 1.0)
    for attack, c in r["counts"].items():
        add(f"least_perturbation ({attack}): forward passes per input and budget tried", c["rows_per_budget"], 1.0)
    for what, c in r.get("onnx", {}).items():
        add(f"ONNX Runtime / torch: {what}", c["ratio"], 1.0)
    return out


def _report_lines(r: dict) -> list[str]:
    lines = [f"{x['what']}: {x['measured']:.3f} / {x['target']:g}  {x['verdict']}" for x in r["targets"]]
    lines += [f"accuracy against float64: {k} {v:.2g}" for k, v in r["accuracy"].items()]
    for attack, c in r["counts"].items():
        lines.append(f"least_perturbation ({attack}): {c['forward_rows']} forward rows in {c['forward_calls']} calls "
                     f"for {c['budgets_tried']} (input, budget) pairs, of which {c['direction_rows']} for the direction "
                     f"(with {c['grad_calls']} gradient call(s)); {c['found']} of {r['n']} fooled within 6")
    return lines


def write(results: list[dict], out: Path, machine: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "attacks.json").write_text(json.dumps({"machine": machine, "results": results}, indent=1))
    lines = ["# Attack and spectrum paths against the unavoidable work\n", f"Machine: {machine}\n",
             "Times per input, medians of interleaved rounds in one run; every ratio is taken within it.\n"]
    for r in results:
        lines += [f"\n## {r['label']}\n", f"Batch of {r['n']}: {r['data']}.\n", "| path | ms per input |", "|---|---|"]
        lines += [f"| {k} | {v * 1e3:.3f} |" for k, v in r["times_s"].items()]
        lines += ["", "| target | measured | target | verdict |", "|---|---|---|---|"]
        lines += [f"| {x['what']} | {x['measured']:.3f} | {x['target']:g} | {x['verdict']} |" for x in r["targets"]]
        lines += [""] + [f"- {s}" for s in _report_lines(r)[len(r["targets"]):]] + [f"- {s}" for s in r["notes"]]
    (out / "attacks.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="mnist,cifar,imagenet")
    ap.add_argument("--batch", type=int, default=None, help="inputs per row (default 32 / 16 / 1)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds (1 on the C = 1000 row)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    ap.add_argument("--vgg-width", type=float, default=0.5)
    ap.add_argument("--vgg-weights", default=str(HERE.parent / "paper_results" / "models" / "vgg_cifar_w0.5.pt"))
    ap.add_argument("--resnet-depth", type=int, default=None)
    ap.add_argument("--resnet-width", type=float, default=None)
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    args.device = "cpu"
    warnings.simplefilter("ignore", UserWarning)
    return bs.run_rows(bench_row, write, args, "attacks.md and attacks.json")


if __name__ == "__main__":
    sys.exit(main())
