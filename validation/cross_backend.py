"""Cross-backend agreement: NumPy reference, TorchBackend (float32 / float64), OnnxBackend and a
dense float64 FIM from ``torch.autograd.functional.jacobian`` (code the library does not use).

For each model (covering Conv, ReLU, ELU, Tanh, MaxPool, AvgPool, BatchNorm in eval, Linear,
Flatten, Dropout in eval, a residual add and global average pooling) and a few inputs, checks:
probabilities, per-class gradients, Fisher-vector products, the top-k eigenvalues and the OSSA
direction (|cos| of the top eigenvectors). Tolerances: relative 1e-4 in float32, 1e-9 in float64
(ONNX Runtime's CPU provider has float64 kernels for the MLP's operators only).

Run: ``python -m fisher_ref.validation.cross_backend [--out FILE.json]``; ends in assertions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

TOL = {"float32": 1e-4, "float64": 1e-9}
COS_MIN = 0.999


def _models():
    import torch
    nn = torch.nn

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ELU())
            self.body = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1))
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(6, 5))

        def forward(self, x):
            h = self.stem(x)
            return self.head(torch.relu(h + self.body(h)))

    def randomise_bn(m):
        g = torch.Generator().manual_seed(1)
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.copy_(0.2 * torch.randn(mod.num_features, generator=g))
                mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
                mod.weight.data.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
        return m.eval()

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 6)).eval()
    torch.manual_seed(1)
    cnn = randomise_bn(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Conv2d(4, 8, 3, padding=1), nn.ELU(), nn.AvgPool2d(2), nn.Flatten(),
                                     nn.Dropout(0.5), nn.Linear(8 * 2 * 2, 7)))
    torch.manual_seed(2)
    res = randomise_bn(Residual())
    for m in (mlp, cnn, res):  # weights large enough that the predictions are not uniform
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(2.0)
    return {"mlp_tanh": (mlp, (1, 3, 4), True), "cnn": (cnn, (1, 8, 8), False), "residual": (res, (2, 6, 6), False)}


def _dense_truth(model, x):
    """Probabilities, class gradients and the dense FIM in float64 from the full logit Jacobian."""
    import torch

    m64 = __import__("copy").deepcopy(model).double().eval()
    xt = torch.tensor(x, dtype=torch.float64)
    z = m64(xt[None])[0]
    J = torch.autograd.functional.jacobian(lambda a: m64(a[None])[0], xt).reshape(z.numel(), -1).numpy()
    p = torch.softmax(z, 0).detach().numpy()
    grads = (p[None, :] - np.eye(p.size)) @ J  # grad(-log p_i) = J^T (p - e_i)
    G = J.T @ (np.diag(p) - np.outer(p, p)) @ J
    return p, grads, (G + G.T) / 2


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(np.max(np.abs(b)), 1e-300))


def run(n_inputs: int = 3, k: int = 4, seed: int = 0, verbose: bool = True) -> list[dict]:
    """Compare every backend with the dense truth; returns one record per (model, backend, input)."""
    import torch

    from fisher_ref import fisher_spectrum, ossa
    from fisher_ref.backends import MLPModel, OnnxBackend, TorchBackend
    from fisher_ref.backends.torch import export_onnx

    records = []
    rng = np.random.default_rng(seed)
    for name, (model, shape, has_f64_onnx) in _models().items():
        backends = {
            ("torch", "float32"): TorchBackend(model, input_shape=shape, device="cpu"),
            ("torch", "float64"): TorchBackend(model, input_shape=shape, device="cpu", dtype=torch.float64),
            ("onnx", "float32"): OnnxBackend(export_onnx(model, shape, dtype=torch.float32)),
        }
        if has_f64_onnx:
            backends[("onnx", "float64")] = OnnxBackend(export_onnx(model, shape, dtype=torch.float64))
            lin = [mod for mod in model if isinstance(mod, torch.nn.Linear)]
            backends[("numpy", "float64")] = MLPModel(
                [(l.weight.detach().double().numpy(), l.bias.detach().double().numpy()) for l in lin],
                activation="tanh", input_shape=shape)
        X = rng.uniform(0, 1, (n_inputs,) + shape)
        V = rng.standard_normal((n_inputs, 2) + shape)
        truth = [_dense_truth(model, x) for x in X]
        for (kind, dt), b in backends.items():
            t0 = time.perf_counter()
            p, g = b.class_gradients(X)
            fvp = b.fisher_vector_product(X, V)
            w, vecs = fisher_spectrum(X, b, k=k, method="gram")
            w_mf, _ = fisher_spectrum(X, b, k=k, operator="matrix-free", method="lanczos", rng=0)
            res = ossa(X, b, epsilon=0.5, bounds=None)
            for j, (p_t, g_t, G_t) in enumerate(truth):
                w_t, V_t = np.linalg.eigh(G_t)
                w_t, V_t = w_t[::-1][:k], V_t[:, ::-1][:, :k]
                rec = {
                    "model": name, "backend": kind, "dtype": dt, "input": j,
                    "probabilities": _rel(p[j], p_t),
                    "class_gradients": _rel(g[j].reshape(len(p_t), -1), g_t),
                    "fisher_vector_product": _rel(fvp[j].reshape(2, -1), (G_t @ V[j].reshape(2, -1).T).T),
                    "eigenvalues_gram": _rel(w[j], w_t),
                    "eigenvalues_matrix_free": _rel(w_mf[j], w_t),
                    "ossa_cos": float(abs(res.eigenvector[j].ravel() @ V_t[:, 0])),
                    "eigengap": float((w_t[0] - w_t[1]) / w_t[0]),
                    "seconds": time.perf_counter() - t0,
                }
                records.append(rec)
        if verbose:
            for (kind, dt) in backends:
                rs = [r for r in records if r["model"] == name and r["backend"] == kind and r["dtype"] == dt]
                worst = {q: max(r[q] for r in rs) for q in ("probabilities", "class_gradients",
                                                             "fisher_vector_product", "eigenvalues_gram",
                                                             "eigenvalues_matrix_free")}
                print(f"{name:9s} {kind:5s} {dt}: " + "  ".join(f"{q} {v:.1e}" for q, v in worst.items())
                      + f"  min|cos| {min(r['ossa_cos'] for r in rs):.6f}")
    return records


def check(records: list[dict]) -> None:
    """The assertions: every quantity within the dtype's tolerance, OSSA directions aligned."""
    for r in records:
        tol = TOL[r["dtype"]]
        for q in ("probabilities", "class_gradients", "fisher_vector_product", "eigenvalues_gram",
                  "eigenvalues_matrix_free"):
            assert r[q] <= tol, f"{r['model']} {r['backend']} {r['dtype']} input {r['input']}: {q} off by {r[q]:.2e} > {tol:g}"
        if r["eigengap"] > 1e-3:  # the top eigenvector is defined (up to sign)
            assert r["ossa_cos"] > COS_MIN, f"{r['model']} {r['backend']} {r['dtype']}: OSSA |cos| {r['ossa_cos']:.6f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the records as JSON here")
    ap.add_argument("--inputs", type=int, default=3)
    args = ap.parse_args(argv)
    records = run(n_inputs=args.inputs)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"tolerances": TOL, "cos_min": COS_MIN, "records": records}, f, indent=1)
    check(records)
    print(f"cross-backend agreement: {len(records)} comparisons within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
