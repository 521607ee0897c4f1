"""Golden reference cases: small models, inputs and the float64 answers they must give.

Each case is a folder ``validation/golden/<name>/`` with

* ``case.json`` - what the model is, the tolerances the values hold to, how they were computed;
* ``expected.npz`` - ``x`` (inputs), ``probs`` (n, C), ``grads`` (n, C, *input_shape) of
  ``-log p_i``, ``eigenvalues`` (n, k) and ``eigenvectors`` (n, k, *input_shape) of the top-k
  Fisher eigenpairs, ``labels`` (the predicted classes) and ``ossa_eta`` (n, *input_shape) at
  ``epsilon``, all float64;
* the model: ``model.npz`` (NumPy reference weights ``W0, b0, ...``) and/or ``model.onnx``.

The expected values of the NumPy-weight cases come from the closed-form float64 NumPy reference
models; those of the convolutional ONNX case from ``torch.autograd.functional.jacobian`` in
float64 on the torch model the ONNX file was exported from (``model.pt`` beside it), i.e. from
code that shares nothing with fisher_ref's operators and eigensolvers. Eigenpairs come from
``numpy.linalg.eigh`` of the dense d x d matrix (eq. 4), never from fisher_ref's solvers.

Regenerate (deterministic, seeded): ``python -m fisher_ref.validation.golden --regenerate``.
Check fisher_ref against them: ``python -m fisher_ref.validation.golden``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
K = 4
EPSILON = 0.5


def _dense_answers(p: np.ndarray, grads: np.ndarray, k: int):
    """eigh of the dense FIM; eigenvectors signed so their largest-magnitude entry is positive."""
    G = np.einsum("c,cd,ce->de", p, grads, grads)
    w, V = np.linalg.eigh((G + G.T) / 2)
    w, V = w[::-1][:k], V[:, ::-1][:, :k]
    idx = np.argmax(np.abs(V), axis=0)
    V = V * np.sign(V[idx, np.arange(k)])
    return np.maximum(w, 0.0), V.T


def _ossa_eta(logp_fn, x: np.ndarray, v: np.ndarray, label: int, eps: float):
    """Algorithm 1 lines 8-10 with the case's own log-probability function, from the canonically
    signed v (largest-magnitude entry positive). Also whether the sign is determined: when the loss
    increases in both directions or in neither, Algorithm 1's answer depends on the starting sign."""
    loss0 = -logp_fn(x)[label]
    up, down = -logp_fn(x + eps * v)[label] > loss0, -logp_fn(x - eps * v)[label] > loss0
    eta = eps * v if up else -eps * v
    return eta, bool(up != down)


def _numpy_case(name, model, X, description):
    from fisher_ref.backends._numpy_models import _log_softmax

    out = {k: [] for k in ("probs", "grads", "eigenvalues", "eigenvectors", "labels", "ossa_eta", "ossa_sign_defined")}
    for x in X:
        # closed form, float64: g_i = J^T (p - e_i) from the logit Jacobian of the MLP
        a = x.reshape(-1)
        J = np.eye(a.size)
        for w, b in zip(model.weights[:-1], model.biases[:-1]):
            h = w @ a + b
            act = np.tanh(h) if model.activation == "tanh" else np.where(h > 0, h, np.expm1(np.minimum(h, 0)))
            der = 1 - act ** 2 if model.activation == "tanh" else np.where(h > 0, 1.0, act + 1.0)
            J = der[:, None] * (w @ J)
            a = act
        z = model.weights[-1] @ a + model.biases[-1]
        J = model.weights[-1] @ J
        logp_fn = lambda xx: _log_softmax(model.logits(xx)[0][None])[0]
        for key, val in zip(out, _answers(_log_softmax(z[None])[0], J, x, logp_fn)):
            out[key].append(val)
    return {k: np.stack(v) for k, v in out.items()}


def _answers(logp: np.ndarray, J: np.ndarray, x: np.ndarray, logp_fn):
    """Expected values from log p and the logit Jacobian J (C, d): g_i = J^T (p - e_i) with
    p_i - 1 = expm1(log p_i), eigh of the dense FIM, OSSA's eta."""
    p = np.exp(logp)
    seeds = p[None, :] - np.eye(p.size)
    seeds[np.diag_indices(p.size)] = np.expm1(logp)
    grads = seeds @ J
    w, V = _dense_answers(p, grads, K)
    label = int(np.argmax(p))
    eta, defined = _ossa_eta(logp_fn, x, V[0].reshape(x.shape), label, EPSILON)
    return p, grads.reshape((p.size,) + x.shape), w, V.reshape((K,) + x.shape), label, eta, defined


def _torch_case(model, X):
    import torch

    m64 = __import__("copy").deepcopy(model).double().eval()
    out = {k: [] for k in ("probs", "grads", "eigenvalues", "eigenvectors", "labels", "ossa_eta", "ossa_sign_defined")}
    logp_fn = lambda xx: torch.log_softmax(m64(torch.tensor(xx[None]))[0], 0).detach().numpy()
    for x in X:
        xt = torch.tensor(x)
        J = torch.autograd.functional.jacobian(lambda a: m64(a[None])[0], xt).reshape(-1, x.size).numpy()
        for key, val in zip(out, _answers(logp_fn(x), J, x, logp_fn)):
            out[key].append(val)
    return {k: np.stack(v) for k, v in out.items()}


def regenerate(root: Path = GOLDEN_DIR) -> list[str]:
    """Write every golden case (deterministic)."""
    from fisher_ref.backends import LogisticRegressionModel, MLPModel, bundled_mnist_mlp
    from fisher_ref.datasets import load_bundled_mnist

    rng = np.random.default_rng(20190127)
    cases = {}
    lr = LogisticRegressionModel.random((4,), 3, scale=3.0, rng=1)
    cases["logreg_c3_d4"] = (lr, rng.uniform(0, 1, (5, 4)), "multinomial logistic regression, C = 3, d = 4")
    mt = MLPModel.random((1, 4, 4), 5, (12,), activation="tanh", scale=2.0, rng=2)
    cases["mlp_tanh_c5_1x4x4"] = (mt, rng.uniform(0, 1, (4, 1, 4, 4)), "MLP 16-12-5, tanh, input (1, 4, 4)")
    me = MLPModel.random((10,), 4, (8, 6), activation="elu", scale=2.0, rng=3)
    cases["mlp_elu_c4_d10"] = (me, rng.uniform(0, 1, (4, 10)), "MLP 10-8-6-4, ELU")
    mn = bundled_mnist_mlp()
    xm, _ = load_bundled_mnist()
    cases["bundled_mnist_mlp"] = (mn, xm[[0, 50, 100]], "the bundled MNIST MLP 784-100-10 tanh on 3 bundled test images")
    written = []
    for name, (model, X, desc) in cases.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        ans = _numpy_case(name, model, X.astype(np.float64), desc)
        np.savez_compressed(d / "model.npz", **{f"W{i}": w for i, w in enumerate(model.weights)},
                            **{f"b{i}": b for i, b in enumerate(model.biases)},
                            activation=model.activation, input_shape=np.array(model.input_shape))
        np.savez_compressed(d / "expected.npz", x=X, **ans)
        _write_json(d, name, desc, "numpy", "closed-form float64 NumPy (logit Jacobian), eigh of the dense FIM",
                    model.input_shape, int(ans["probs"].shape[1]))
        written.append(name)
    written += _onnx_cases(root, rng)
    return written


def torch_architectures():
    """The torch modules of the ONNX cases (weights in each case's ``model.pt``):
    ``onnx_cnn_f32_1x8x8`` and ``onnx_mlp_f64_d6``."""
    import torch

    nn = torch.nn
    cnn = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(3, 4, 3, padding=1), nn.ELU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 2 * 2, 6))
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 4))
    return cnn.eval(), mlp.eval()


def _onnx_cases(root: Path, rng) -> list[str]:
    try:
        import torch
    except ImportError:  # pragma: no cover
        print("torch not installed: the ONNX golden cases are not regenerated")
        return []
    from fisher_ref.backends.torch import export_onnx

    torch.manual_seed(7)
    cnn = torch_architectures()[0]
    with torch.no_grad():
        for prm in cnn.parameters():
            prm.mul_(2.0)
        bn = cnn[1]
        bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.05]))
        bn.running_var.copy_(torch.tensor([0.8, 1.3, 0.6]))
    cnn.eval()
    torch.manual_seed(8)
    mlp = torch_architectures()[1].double().eval()
    with torch.no_grad():
        for prm in mlp.parameters():
            prm.mul_(2.0)
    cases = {
        "onnx_cnn_f32_1x8x8": (cnn, (1, 8, 8), torch.float32,
                               "CNN (Conv, BatchNorm, ReLU, MaxPool, ELU, AvgPool, Linear), ONNX float32"),
        "onnx_mlp_f64_d6": (mlp, (6,), torch.float64, "MLP 6-9-4 tanh, ONNX float64"),
    }
    written = []
    for name, (model, shape, dtype, desc) in cases.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        model = model.to(dtype)
        export_onnx(model, shape, d / "model.onnx", dtype=dtype)
        torch.save(model.state_dict(), d / "model.pt")
        X = rng.uniform(0, 1, (4,) + shape)
        X = X.astype(np.float32).astype(np.float64) if dtype == torch.float32 else X
        ans = _torch_case(model, X)
        np.savez_compressed(d / "expected.npz", x=X, **ans)
        _write_json(d, name, desc, "onnx", "torch.autograd.functional.jacobian in float64 on model.pt (the "
                    "weights the ONNX file was exported from), eigh of the dense FIM", shape, int(ans["probs"].shape[1]),
                    model_dtype="float32" if dtype == torch.float32 else "float64")
        written.append(name)
    return written


def _write_json(d: Path, name, desc, kind, how, shape, C, model_dtype="float64"):
    tol = {"float64": {"probs": 1e-12, "grads": 1e-10, "eigenvalues": 1e-10, "eigenvectors": 1e-8, "ossa_eta": 1e-8},
           "float32": {"probs": 1e-5, "grads": 1e-4, "eigenvalues": 1e-4, "eigenvectors": 1e-3, "ossa_eta": 1e-3}}
    meta = {
        "name": name, "description": desc, "model": "model.onnx" if kind == "onnx" else "model.npz",
        "model_dtype": model_dtype, "input_shape": list(shape), "n_classes": C, "k": K, "epsilon": EPSILON,
        "computed_with": how,
        "tolerances": tol,
        "tolerance_meaning": "max |got - expected| / max |expected| per quantity (eigenvectors up to sign, compared only "
                             "where the eigenvalue is separated from its neighbours by more than 1e-6 lambda_1); use the "
                             "'float32' row for a float32 implementation",
        "regenerate": "python -m fisher_ref.validation.golden --regenerate",
    }
    (d / "case.json").write_text(json.dumps(meta, indent=1) + "\n")


def check_library(root: Path = GOLDEN_DIR) -> list[dict]:
    """fisher_ref's own backends against every golden case (NumPy models; ONNX Runtime)."""
    from fisher_ref.testing import assert_fisher_close, golden_cases, load_backend

    rows = []
    for case in golden_cases(root):
        backend = load_backend(case)
        report = assert_fisher_close(backend, case)
        rows.append({"case": case.name, "dtype": str(np.dtype(backend.dtype)), **report})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="golden reference cases")
    ap.add_argument("--regenerate", action="store_true", help="rewrite the cases (deterministic)")
    ap.add_argument("--out", help="write the check's record as JSON here")
    args = ap.parse_args(argv)
    if args.regenerate:
        names = regenerate()
        print(f"wrote {len(names)} golden cases into {GOLDEN_DIR}: {', '.join(names)}")
    rows = check_library()
    for r in rows:
        print(f"{r['case']:24s} {r['dtype']}  " + "  ".join(f"{q} {v:.1e}" for q, v in r.items()
                                                          if q not in ("case", "dtype")))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    print(f"golden cases: {len(rows)} agree within their tolerances")
    return 0


if __name__ == "__main__":
    sys.exit(main())
