"""paper_results/adaptive.py: its differentiable detector features against the library's (independent
ground truth: the dense Fisher matrix of eq. 4, the detectors' own transforms) and finite differences."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

import fisher_ref as fr  # noqa: E402
from fisher_ref.backends import TorchBackend  # noqa: E402
from fisher_ref.detection import KernelDensityDetector, LIDDetector  # noqa: E402

from paper_results import adaptive as A  # noqa: E402


def small_net(seed=0, n_classes=4):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 9), torch.nn.Tanh(), torch.nn.Linear(9, 7),
                               torch.nn.Tanh(), torch.nn.Linear(7, n_classes)).double().eval()


def test_fisher_log_eigenvalues_are_the_dense_spectrum():
    net = small_net()
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    logl, _ = A.fisher_log_eigenvalues(torch, net, torch.tensor(x), 3)
    b = TorchBackend(net, input_shape=(2, 3))
    p, g = b.class_gradients(x)
    for i in range(len(x)):
        dense = np.linalg.eigvalsh(fr.fisher_matrix(p[i], g[i]))[::-1][:3]
        np.testing.assert_allclose(np.exp(logl[i].detach().numpy()), dense, rtol=1e-10)


def test_fisher_log_eigenvalue_gradient_matches_finite_differences():
    net = small_net(1)
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.standard_normal((1, 2, 3)), requires_grad=True)
    logl, _ = A.fisher_log_eigenvalues(torch, net, x, 2)
    (g,) = torch.autograd.grad(logl[0, 0], x)
    u = torch.tensor(rng.standard_normal((1, 2, 3)))
    h = 1e-6

    def f(t):
        return A.fisher_log_eigenvalues(torch, net, (x.detach() + t * u).requires_grad_(True), 2)[0][0, 0].item()

    fd = (f(h) - f(-h)) / (2 * h)
    assert abs(fd - float((g * u).sum())) <= 1e-6 * max(1.0, abs(fd))


@pytest.fixture(scope="module")
def relu_backend():
    torch.manual_seed(4)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 8),
                              torch.nn.ReLU(), torch.nn.Linear(8, 3)).double().eval()
    with torch.no_grad():  # steep enough that all three classes occur in [0, 1]^6
        net[1].weight.mul_(6)
        net[1].bias.sub_(net[1].weight.sum(1) / 2)
    return net, TorchBackend(net, input_shape=(2, 3), feature_layers=["2", "4"])


def test_kde_and_lid_features_match_the_detectors(relu_backend):
    net, b = relu_backend
    rng = np.random.default_rng(4)
    X = rng.random((300, 2, 3))
    Q = rng.random((7, 2, 3))
    kd = KernelDensityDetector(b, bandwidth=0.7).make_transformer().fit(X)
    z, acts = A._activations(torch, net, [kd.layer_], torch.tensor(Q))
    pred = z.argmax(1).detach().numpy()
    ours = [A.log_kde(torch, acts[kd.layer_][i:i + 1], torch.tensor(A.kd_reference(kd, pred[i])), 0.7).item()
            for i in range(len(Q))]
    np.testing.assert_allclose(ours, kd.transform(Q)[:, 0], rtol=1e-10)
    lid = LIDDetector(b, k=10, random_state=0).make_transformer().fit(X)
    _, acts = A._activations(torch, net, lid.layers_, torch.tensor(Q))
    ours = np.stack([A.lid(torch, acts[n], torch.tensor(lid.reference_[n]), 10).detach().numpy() for n in lid.layers_], 1)
    np.testing.assert_allclose(ours, lid.transform(Q), rtol=1e-8)


def test_adaptive_pgd_stays_in_the_budget_and_stops_at_success(relu_backend):
    net, _ = relu_backend
    rng = np.random.default_rng(5)
    X = rng.random((20, 2, 3))
    y = net(torch.tensor(X)).argmax(1).detach().numpy()
    eps = 3.0
    adv, ok = A.adaptive_pgd(torch, net, X, y, eps, 30, None)
    norms = np.linalg.norm((adv - X).reshape(20, -1), axis=1)
    assert ok.any() and np.all(norms <= eps * (1 + 1e-9)) and adv.min() >= 0 and adv.max() <= 1
    pred = net(torch.tensor(adv)).argmax(1).detach().numpy()
    np.testing.assert_array_equal(pred[ok] != y[ok], True)  # the kept iterates are adversarial
    np.testing.assert_array_equal(adv[~ok], X[~ok])


def test_quick_run_writes_the_table_and_an_interrupted_run_resumes_to_the_same_numbers(tmp_path):
    args = ["--quick", "--datasets", "mnist", "--out", str(tmp_path), "--no-progress"]
    cache = tmp_path / "cache"
    summary = A.main([*args, "--cache-dir", str(cache)])
    rows = summary["rows"]
    batches = sorted((cache / "adaptive").glob("*.npz"))
    assert len(batches) == 7  # PGD without a penalty once for all detectors; 2 adaptive runs per detector
    for f in batches[::2]:  # as if interrupted: some batches were never written
        f.unlink()
    assert A.main([*args, "--cache-dir", str(cache)])["rows"] == rows
    assert A.main([*args, "--no-cache"])["rows"] == rows
    assert {(r["detector"], r["attacker"], r["trained_on"]) for r in rows} == {
        (d, a, t) for d in A.DETECTORS
        for a, t in (("PGD, stopped at success", "BIM, stopped"), ("adaptive PGD", "BIM, stopped"),
                     ("adaptive PGD", "adaptive PGD"))}
    for r in rows:
        assert 0 <= r["success"] <= 1 and 0 <= r["evasion"] <= r["success"]
        assert r["l2_median"] <= r["epsilon"] * (1 + 1e-6)
    md = (tmp_path / "adaptive.md").read_text()
    assert "| Ours | adaptive PGD |" in md and "Quick run" in md
    assert (tmp_path / "adaptive.csv").read_text().count("\n") == 1 + len(rows)
