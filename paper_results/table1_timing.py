"""Table 1: computation time of OSSA's eigenproblem with the paper's numerical methods (dense
eigendecomposition, Lanczos, Alias+Lanczos, power iteration, Alias+power) and fisher_ref's exact
ones, CIFAR-10 VGG and an ImageNet-shaped ResNet.

This reuses the spectrum benchmark, ``benchmarks/bench_spectrum.py`` (nothing is duplicated): it is
run with the trained CIFAR-10 VGG of ``paper_results/models`` and writes its full tables (times, ratios
to one input Jacobian, accuracy of the approximate methods, memory) into ``results/table1/``. This
script then puts the per-input times next to the paper's. The ILSVRC-2012 row is measured on an
ImageNet-shaped ResNet (3 x 224 x 224, 1000 classes) with seeded random weights, since no
ImageNet data or pretrained weights are available here: ResNet-152 on a GPU, a ResNet-18 at half
width on the CPU (said in the table). Absolute seconds depend on the machine (the paper does not
name its own); the ratios between methods are what carries over.

    python -m paper_results table1 [--quick] [--datasets mnist,cifar]

``--datasets`` chooses the MNIST and CIFAR-10 rows (the ImageNet-shaped row is always measured);
``--quick`` measures one row only, CIFAR-10's unless ``--datasets mnist``.
"""

from __future__ import annotations

import importlib.util
import json

from paper_results import _common as C

PAPER_METHODS = {  # paper's column -> the benchmark's method name (k = 1: OSSA needs v_1 only)
    "Eigen-decomposition": "dense eigh (paper)",
    "Lanczos": "Lanczos (paper)",
    "Alias+Lanczos": "Alias+Lanczos (paper)",
    "Power iteration": "power (paper)",
    "Alias+Power iteration": "Alias+power (paper)",
}
OURS = ("Gram, exact (ours)", "matrix-free Lanczos (ours)", "matrix-free block Lanczos (ours)")


def _bench():
    path = C.REPO / "benchmarks" / "bench_spectrum.py"
    spec = importlib.util.spec_from_file_location("fisher_ref_bench_spectrum", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv=None) -> dict:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (ResNet-152 on cuda)")
    args = p.parse_args(argv)
    run = C.Run("table1", args)
    out = run.out / "table1"
    vgg = C.MODELS[run.model_key("cifar")]
    bargs = ["--vgg-weights", str(C.REPO / vgg.weights), "--vgg-width", str(vgg.kwargs["width"]),
             "--out", str(out), "--seed", str(args.seed), "--device", args.device]
    if args.threads:
        bargs += ["--threads", str(args.threads)]
    if run.quick:
        bargs += ["--rows", run.datasets[-1], "--inputs", "1", "--repeats", "1", "--k", "1", "--ossa-batch", "4",
                  "--no-memory", "--no-onnx", "--skip", "dense,matrix-free"]
    else:
        bargs += ["--rows", ",".join([*run.datasets, "imagenet"]), "--inputs", "5", "--repeats", "3", "--k", "1", "20",
                  "--imagenet-k", "1", "20", "--ossa-batch", "32"]
    _bench().main(bargs)
    res = json.loads((out / "spectrum_methods.json").read_text())
    for name in ("spectrum_methods.md", "spectrum_methods.csv", "spectrum_methods.json"):
        run.written.append(out / name)

    rows, md_rows, summary = [], [], {"machine": res["machine"], "rows": {}}
    for r in res["results"]:
        label = {"mnist": "MNIST", "cifar": "CIFAR-10", "imagenet": "ILSVRC-2012"}[r["row"]]
        paper = C.PAPER["table1"].get(label)
        by = {m["method"]: m for m in r["methods"] if m["k"] == 1}
        cells, srow = [], {}
        for col, meth in PAPER_METHODS.items():
            m = by.get(meth)
            t = m.get("time_s") if m else None
            srow[col] = t
            cells.append("intractable" if m and t is None else ("-" if t is None else f"{t:.3f} ({m['ratio_to_jacobian']:.2f} J)"))
            rows.append([label, col, t, m.get("ratio_to_jacobian") if m else None, paper[col] if paper else None])
        ours = [by[o] for o in OURS if o in by and by[o].get("time_s") is not None]
        best = min(ours, key=lambda m: m["time_s"]) if ours else None
        md_rows.append([f"{label} (ours: {r['label']})", *cells,
                        f"{best['time_s']:.3f} ({best['ratio_to_jacobian']:.2f} J, {best['method']})" if best else "-"])
        if paper:
            md_rows.append([f"{label} (paper)", *(paper[c] for c in PAPER_METHODS), "-"])
        summary["rows"][label] = dict(model=r["label"], jacobian_s=r["jacobian_s"], paper_methods=srow,
                                      ours=best["method"] if best else None, ours_s=best["time_s"] if best else None)
    run.write_table("table1_timing", ["row", "method", "seconds_per_input", "ratio_to_jacobian", "paper"], rows)
    md = ["# Table 1: time per input of the top Fisher eigenpair (OSSA, k = 1), seconds", "",
          "Ours: the median time per input on this machine, and in brackets the ratio to one full input Jacobian "
          "(all class gradients, batched) timed beside it (J). The paper's times come from its own (unnamed) "
          "machine: compare ratios between methods, not seconds.", "",
          C.md_table(["", *PAPER_METHODS, "fisher_ref exact (fastest)"], md_rows),
          f"Machine: {res['machine']}.",
          "The full benchmark (k = 1 and k = 20, accuracy of the approximate methods against the exact spectrum, "
          "peak memory, batched OSSA, ONNX Runtime against torch) is in [table1/spectrum_methods.md]"
          "(table1/spectrum_methods.md). The ILSVRC-2012 row uses an ImageNet-shaped ResNet with seeded random "
          "weights (no ImageNet data or pretrained weights here); its Monte-Carlo (alias) accuracy is measured "
          "there against the exact spectrum of the same model."]
    run.write_markdown("table1_timing", "\n".join(md))
    return run.finish(summary)


if __name__ == "__main__":
    main()
