"""Eq. 3 by finite differences: G_x is the Hessian of eta -> KL(p(x) || p(x + eta)) at eta = 0.

KL(0) = 0 and its gradient vanishes, so the central second difference

    h(t) = (KL(t v) + KL(-t v)) / t^2 = v^T G v + O(t^2)

along a unit direction v recovers the quadratic form of the Fisher matrix. The KL is computed here
in torch float64 from the model's logits (code fisher_ref does not use: the NumPy model's weights
are copied into a torch module); v^T G v and lambda_1 come from fisher_ref. Directions: random unit
vectors and the top eigenvector v1 (where h(t) -> lambda_1).

Run: ``python -m fisher_ref.validation.kl_finite_differences [--out FILE.json]``; ends in assertions.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

STEPS = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)
RTOL = 1e-5  # best step; the truncation error is O(t^2), the rounding error O(eps / t^2)


def _models():
    import torch

    from fisher_ref.backends import TorchBackend, bundled_mnist_mlp
    from fisher_ref.datasets import load_bundled_mnist

    mlp = bundled_mnist_mlp()
    layers = []
    for i, (w, b) in enumerate(zip(mlp.weights, mlp.biases)):
        lin = torch.nn.Linear(w.shape[1], w.shape[0]).double()
        lin.weight.data, lin.bias.data = torch.tensor(w), torch.tensor(b)
        layers += [lin] + ([torch.nn.Tanh()] if i < len(mlp.weights) - 1 else [])
    torch_mlp = torch.nn.Sequential(torch.nn.Flatten(), *layers).eval()
    x_mnist, _ = load_bundled_mnist()

    torch.manual_seed(3)
    nn = torch.nn
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ELU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1),
                        nn.Tanh(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 5)).double().eval()
    with torch.no_grad():
        for prm in cnn.parameters():
            prm.mul_(3.0)
    x_cnn = np.random.default_rng(0).uniform(0, 1, (3, 1, 10, 10))
    return {
        "bundled MNIST MLP (NumPy reference backend)": (mlp, torch_mlp, x_mnist[[3, 60, 120]], True),
        "CNN, ELU/tanh/max-pool (TorchBackend float64)": (TorchBackend(cnn, input_shape=(1, 10, 10), dtype=torch.float64),
                                                         cnn, x_cnn, False),
    }


def _kl(net, x, eta) -> float:
    """KL(p(x) || p(x + eta)) in torch float64, log-softmax by torch."""
    import torch

    with torch.no_grad():
        a = torch.log_softmax(net(torch.tensor(x[None])), 1)[0]
        b = torch.log_softmax(net(torch.tensor((x + eta)[None])), 1)[0]
        return float(torch.sum(torch.exp(a) * (a - b)))


def run(n_random: int = 4, seed: int = 0, verbose: bool = True) -> list[dict]:
    from fisher_ref import FisherOperator, fisher_spectrum

    rng = np.random.default_rng(seed)
    records = []
    for name, (backend, net, X, smooth) in _models().items():
        for j, x in enumerate(X):
            A = FisherOperator.from_backend(x, backend)
            w, V = fisher_spectrum(x, backend, k=1)
            dirs = [("top eigenvector", V[0])] + [(f"random {i}", rng.standard_normal(x.shape)) for i in range(n_random)]
            for what, v in dirs:
                v = v / np.linalg.norm(v)
                q = float(v.ravel() @ (A @ v.ravel()))
                h = [(_kl(net, x, t * v) + _kl(net, x, -t * v)) / t ** 2 for t in STEPS]
                errs = [abs(hi - q) / q for hi in h]
                rec = {"model": name, "smooth": smooth, "input": j, "direction": what, "vGv": q, "lambda_1": float(w[0]),
                       "second_differences": h, "rel_errors": errs, "best_rel_error": min(errs)}
                records.append(rec)
        if verbose:
            rs = [r for r in records if r["model"] == name]
            print(f"{name}: {len(rs)} directions, worst best-step relative error "
                  f"{max(r['best_rel_error'] for r in rs):.1e} (tolerance {RTOL:g})")
    return records


def check(records: list[dict]) -> None:
    for r in records:
        assert r["best_rel_error"] <= RTOL, (f"{r['model']} input {r['input']} {r['direction']}: second difference of "
                                             f"the KL off v^T G v by {r['best_rel_error']:.2e}")
        if r["direction"] == "top eigenvector":
            assert abs(r["vGv"] - r["lambda_1"]) <= 1e-10 * r["lambda_1"], "v1^T G v1 != lambda_1"
        # for a smooth (tanh) model the truncation error falls like t^2 until rounding takes over:
        # 100x from t = 0.1 to 0.01 (max-pool kinks and ELU's second derivative make the CNN's KL only
        # piecewise smooth: there only the small steps are checked)
        e = r["rel_errors"]
        if r["smooth"]:
            assert e[2] <= e[0] / 30 + 1e-7, f"{r['model']} {r['direction']}: no O(t^2) convergence {e}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the records as JSON here")
    args = ap.parse_args(argv)
    records = run()
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"steps": STEPS, "rtol": RTOL, "records": records}, f, indent=1)
    check(records)
    print(f"KL finite differences: {len(records)} directions agree with v^T G v within {RTOL:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
