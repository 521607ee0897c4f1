"""TorchBackend against an independent dense ground truth (autograd Jacobians, float64)."""

import copy
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import fisher_ref as fr  # noqa: E402
import fisher_ref.backends as fb  # noqa: E402
from fisher_ref import MatrixFreeFisherOperator, MissingCapabilityError  # noqa: E402
from fisher_ref.backends import TorchBackend  # noqa: E402

import _torch_models as tm  # noqa: E402

# torch's forward-mode AD scripts its JVP decompositions on first use (a torch-internal warning)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
RTOL = {torch.float64: 1e-10, torch.float32: 1e-4}


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def assert_rel(actual, expected, rtol, what=""):
    """max |actual - expected| <= rtol * max |expected| (shapes must match)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = max(float(np.abs(expected).max()), 1e-300)
    err = float(np.abs(actual - expected).max()) / scale
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:.1g}"


def dense_truth(model, x):
    """float64 ground truth from the logit Jacobian: p (n, C), grads (n, C, d), G (n, d, d)."""
    m = copy.deepcopy(model).double().eval()
    ps, gs, Gs = [], [], []
    for xi in torch.as_tensor(x, dtype=torch.float64):
        J = torch.autograd.functional.jacobian(lambda a: m(a[None])[0], xi).reshape(-1, xi.numel())
        with torch.no_grad():
            p = torch.softmax(m(xi[None])[0], dim=0)
        # grad log p_i = J_i - sum_j p_j J_j, so g_i = grad(-log p_i) = p^T J - J_i
        gs.append((p @ J)[None, :] - J)
        Gs.append(J.T @ (torch.diag(p) - torch.outer(p, p)) @ J)
        ps.append(p)
    return torch.stack(ps).numpy(), torch.stack(gs).numpy(), torch.stack(Gs).numpy()


def check_against_truth(backend, logits_model, x, rtol, rng):
    n = x.shape[0]
    p_ref, g_ref, G_ref = dense_truth(logits_model, x)
    C = p_ref.shape[1]
    assert_rel(backend.probabilities(x), p_ref, rtol, "probabilities")
    p, g = backend.class_gradients(x)
    assert_rel(p, p_ref, rtol, "class_gradients probs")
    assert_rel(g.reshape(n, C, -1), g_ref, rtol, "class gradients")
    cls = [C - 1, 0]
    _, gs = backend.class_gradients(x, classes=cls)
    assert_rel(gs.reshape(n, 2, -1), g_ref[:, cls], rtol, "class gradients, subset")
    for k in (1, 3):
        v = rng.standard_normal((n, k, *x.shape[1:]))
        gv = backend.fisher_vector_product(x, v)
        ref = np.einsum("nde,nke->nkd", G_ref, v.reshape(n, k, -1))
        assert_rel(gv.reshape(n, k, -1), ref, rtol, f"Fisher-vector product, k={k}")
    labels = rng.integers(0, C, n)
    pl, gl = backend.loss_gradient(x, labels)
    assert_rel(pl, p_ref, rtol, "loss_gradient probs")
    assert_rel(gl.reshape(n, -1), g_ref[np.arange(n), labels], rtol, "loss gradient")


# ---------------------------------------------------------------- agreement with the dense truth
@pytest.mark.parametrize("head", list(tm.HEADS))
@pytest.mark.parametrize("name", list(tm.FACTORIES))
def test_float64_matches_dense_truth(name, head, device):
    rng = np.random.default_rng(0)
    logits_model = tm.FACTORIES[name](3)
    model = tm.FACTORIES[name](3, head=head)
    b = TorchBackend(model, device=device, dtype=torch.float64, output=tm.output_kind(head))
    assert b.dtype == np.float64
    x = tm.random_inputs(model, 3, seed=1)
    check_against_truth(b, logits_model, x, RTOL[torch.float64], rng)


@pytest.mark.parametrize("head", [None, "softmax"])
@pytest.mark.parametrize("name", list(tm.FACTORIES))
def test_float32_matches_dense_truth(name, head, device):
    rng = np.random.default_rng(0)
    model = tm.FACTORIES[name](4, head=head)
    b = TorchBackend(model, device=device, output=tm.output_kind(head))
    assert b.dtype == np.float32 and b.torch_dtype == torch.float32
    x = tm.random_inputs(model, 3, seed=2)
    check_against_truth(b, tm.FACTORIES[name](4), x, RTOL[torch.float32], rng)


def test_output_kinds_agree(device):
    x = tm.random_inputs(tm.small_cnn(0), 4, seed=3)
    v = np.random.default_rng(3).standard_normal((4, 2, 1, 8, 8))
    res = []
    for head in tm.HEADS:
        b = TorchBackend(tm.small_cnn(5, head=head), device=device, dtype=torch.float64, output=tm.output_kind(head))
        res.append((*b.class_gradients(x), b.fisher_vector_product(x, v)))
    for other in res[1:]:
        for a, e in zip(other, res[0]):
            assert_rel(a, e, 1e-10)


# ---------------------------------------------------------------- batching and chunking
@pytest.mark.parametrize("name", ["small_cnn", "tiny_resnet"])
def test_batch_equals_one_at_a_time(name, device):
    model = tm.FACTORIES[name](6)
    b = TorchBackend(model, device=device, dtype=torch.float64)
    x = tm.random_inputs(model, 4, seed=4)
    v = np.random.default_rng(4).standard_normal((4, 2, *model.input_shape))
    p, g = b.class_gradients(x)
    gv = b.fisher_vector_product(x, v)
    for j in range(4):
        pj, gj = b.class_gradients(x[j])  # a single input
        assert_rel(pj[0], p[j], 1e-12)
        assert_rel(gj[0], g[j], 1e-12)
        assert_rel(b.fisher_vector_product(x[j], v[j])[0], gv[j], 1e-12)


def test_chunking_agrees_with_default(device, monkeypatch):
    model = tm.tiny_resnet(7)
    x = tm.random_inputs(model, 5, seed=5)
    v = np.random.default_rng(5).standard_normal((5, 3, *model.input_shape))
    y = np.array([0, 1, 2, 1, 0])
    ref = TorchBackend(model, device=device, dtype=torch.float64)
    p0, g0 = ref.class_gradients(x)
    gv0 = ref.fisher_vector_product(x, v)
    gl0 = ref.loss_gradient(x, y)[1]
    def check(b):
        p, g = b.class_gradients(x)
        assert_rel(p, p0, 1e-12)
        assert_rel(g, g0, 1e-12)
        assert_rel(b.class_gradients(x, classes=[2, 0])[1], g0[:, [2, 0]], 1e-12)
        assert_rel(b.fisher_vector_product(x, v), gv0, 1e-12)
        assert_rel(b.loss_gradient(x, y)[1], gl0, 1e-12)
        assert_rel(b.probabilities(x), p0, 1e-12)

    b1 = TorchBackend(model, device=device, dtype=torch.float64, chunk_size=1)
    check(b1)
    assert b1._blocks(5, 3) == (5, 1)
    # a tiny memory budget splits the batch into single inputs as well
    monkeypatch.setattr(sys.modules[TorchBackend.__module__], "_MEMORY_BUDGET", 1)
    b2 = TorchBackend(model, device=device, dtype=torch.float64)
    check(b2)
    assert b2._blocks(5, 3) == (1, 1)


def test_fisher_vector_products_reuse_one_forward_per_input(device):
    """Products at the same input share one recorded forward pass; another input, or the same
    array changed in place, gets its own (never a stale result)."""
    model = tm.tiny_resnet(9)
    b = TorchBackend(model, device=device, dtype=torch.float64)
    x = tm.random_inputs(model, 2, seed=9)
    rng = np.random.default_rng(9)
    forwards = []
    b.model.register_forward_hook(lambda *a: forwards.append(1))
    G = dense_truth(model, x)[2]

    def check(xi, Gi, k):
        v = rng.standard_normal((1, k, *model.input_shape))
        assert_rel(b.fisher_vector_product(xi, v)[0].reshape(k, -1), v[0].reshape(k, -1) @ Gi, 1e-10)

    xa = x[:1].copy()
    check(xa, G[0], 1)
    n1 = len(forwards)
    for k in (1, 1, 4, 1):  # single tangents (reverse over reverse) and a block (forward mode)
        check(xa, G[0], k)
    assert len(forwards) - n1 == 1  # only the block's forward-mode pass ran the model again
    check(x[1:2], G[1], 1)  # another input
    xa[...] = x[1:2]  # the same array, changed in place
    check(xa, G[1], 1)
    v = rng.standard_normal((2, 1, *model.input_shape))  # a batch: its own forward, right per input
    gv = b.fisher_vector_product(x, v)
    for j in range(2):
        assert_rel(gv[j, 0].reshape(-1), G[j] @ v[j, 0].reshape(-1), 1e-10)


def test_matrix_free_operator_on_torch_backend(device):
    model = tm.mlp_elu(8)
    b = TorchBackend(model, device=device, dtype=torch.float64)
    x = tm.random_inputs(model, 1, seed=8)[0]
    G = dense_truth(model, x[None])[2][0]
    V = np.random.default_rng(8).standard_normal((G.shape[0], 2))
    assert_rel(MatrixFreeFisherOperator(x, b) @ V, G @ V, 1e-10)


@pytest.mark.parametrize("operator", ["exact", "matrix-free"])
def test_spectrum_on_torch_backend(operator, device):
    model = tm.small_cnn(14)
    b = TorchBackend(model, device=device, dtype=torch.float64)
    x = tm.random_inputs(model, 2, seed=14)
    G = dense_truth(model, x)[2]
    w = fr.fisher_spectrum(x, b, k=3, operator=operator, method="lanczos", rng=0)[0]
    assert_rel(w, np.linalg.eigvalsh(G)[:, ::-1][:, :3], 1e-8)


# ---------------------------------------------------------------- the caller's model is left alone
def test_callers_model_is_not_modified(device):
    model = tm.small_cnn(9).train()
    for prm in model.parameters():
        prm.requires_grad_(True)
    state = copy.deepcopy(model.state_dict())
    b = TorchBackend(model, device=device, dtype=torch.float64)
    x = tm.random_inputs(model, 2, seed=9)
    b.class_gradients(x)
    b.fisher_vector_product(x, np.ones((2, 1, 1, 8, 8)))
    b.loss_gradient(x, [0, 1])
    b.stochastic_probabilities(x, 2, rng=0)
    assert model.training and all(mod.training for mod in model.modules())
    assert not b.model.training and not any(mod.training for mod in b.model.modules())
    for key, val in model.state_dict().items():
        assert val.dtype == state[key].dtype and val.device == state[key].device
        assert torch.equal(val, state[key]), key
    for prm in model.parameters():
        assert prm.requires_grad and prm.grad is None and prm.dtype == torch.float32
        assert prm.device.type == "cpu"
    for prm in b.model.parameters():
        assert not prm.requires_grad and prm.grad is None


class _InPlaceOnInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(torch.tanh_(x))


def test_model_working_in_place_on_its_input(device):
    model = _InPlaceOnInput()
    x = np.random.default_rng(13).standard_normal((3, 4))
    x0 = x.copy()
    b = TorchBackend(model, device=device, dtype=torch.float64)
    p_ref, g_ref, G_ref = dense_truth(nn.Sequential(nn.Tanh(), model.lin), x)
    p, g = b.class_gradients(x)
    assert_rel(p, p_ref, 1e-10)
    assert_rel(g, g_ref, 1e-10)
    v = np.ones((3, 1, 4))
    assert_rel(b.fisher_vector_product(x, v)[:, 0], G_ref @ np.ones(4), 1e-10)
    np.testing.assert_array_equal(x, x0)  # the caller's array is never a view into the model


# ---------------------------------------------------------------- construction and shapes
def test_defaults_and_capabilities():
    b = TorchBackend(tm.mlp_tanh(0))
    assert b.device == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert b.dtype == np.float32 and b.output == "logits"
    assert b.capabilities == {"probabilities", "class_gradients", "fisher_vector_product", "loss_gradient"}
    assert not b.supports("features") and not b.supports("stochastic_probabilities")
    b = TorchBackend(tm.mlp_elu(0), device=torch.device("cpu"), dtype=np.float64, feature_layers=["2"])
    assert b.supports("features") and b.supports("stochastic_probabilities")
    assert b.torch_dtype == torch.float64 and b.dtype == np.float64
    assert "TorchBackend(Sequential" in repr(b)


def test_input_shape_probe():
    b = TorchBackend(tm.small_cnn(0), device="cpu")
    b.probabilities(np.zeros((1, 8, 8)))  # one image: model(x) fails, model(x[None]) is (1, C)
    assert b.input_shape == (1, 8, 8)
    b = TorchBackend(tm.small_cnn(0), device="cpu")
    assert b.probabilities(np.zeros((3, 1, 8, 8))).shape == (3, 5)
    assert b.input_shape == (1, 8, 8)
    b = TorchBackend(tm.mlp_elu(0), device="cpu")
    assert b.probabilities(np.zeros(5)).shape == (1, 3)
    assert b.input_shape == (5,)
    b = TorchBackend(tm.mlp_tanh(0), device="cpu")
    b.probabilities(np.zeros((2, 3)))  # Flatten gives (2, 3), which Linear(6) refuses: one input
    assert b.input_shape == (2, 3)
    b = TorchBackend(tm.mlp_tanh(0), device="cpu")
    with pytest.raises(ValueError, match="Pass input_shape="):
        b.probabilities(np.zeros((4, 7)))
    # given input_shape, a batch of one and one input are both accepted
    b = TorchBackend(tm.small_cnn(0), input_shape=(1, 8, 8), device="cpu")
    assert b.probabilities(np.zeros((1, 8, 8))).shape == (1, 5)
    with pytest.raises(ValueError, match="expected"):
        b.probabilities(np.zeros((2, 8, 8)))


class _Lambda(nn.Module):
    def __init__(self, fn, d=4, c=3):
        super().__init__()
        self.lin = nn.Linear(d, c)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.lin(x), x)


def test_errors():
    with pytest.raises(ValueError, match="output must be one of"):
        TorchBackend(tm.mlp_tanh(0), output="softmax")
    with pytest.raises(ValueError, match="chunk_size"):
        TorchBackend(tm.mlp_tanh(0), chunk_size=0)
    with pytest.raises(ValueError, match="dtype"):
        TorchBackend(tm.mlp_tanh(0), dtype=torch.int32)
    with pytest.raises(ValueError, match="device"):
        TorchBackend(tm.mlp_tanh(0), device="no-such-device")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        TorchBackend(lambda x: x)
    # an input_shape the model cannot take: named at construction, with the model's own error
    with pytest.raises(ValueError, match=r"input_shape \(4,\) does not fit the model: .*RuntimeError: mat1 and "
                                         r"mat2 shapes cannot be multiplied.*pass the shape of one input"):
        TorchBackend(nn.Linear(3, 5), input_shape=(4,))
    x = np.random.default_rng(0).standard_normal((3, 4))
    # wrong output shapes: (n,) and (n, 1)
    b = TorchBackend(nn.Sequential(nn.Linear(4, 1), nn.Flatten(0)), input_shape=(4,))
    with pytest.raises(ValueError, match=r"model output has shape \(3,\).*expected \(n, n_classes\)"):
        b.probabilities(x)
    with pytest.raises(ValueError, match="Pass input_shape="):
        TorchBackend(nn.Sequential(nn.Linear(4, 1), nn.Flatten(0))).probabilities(x)
    b = TorchBackend(nn.Linear(4, 1), input_shape=(4,))
    for call in (b.probabilities, b.class_gradients, lambda a: b.fisher_vector_product(a, a[:, None])):
        with pytest.raises(ValueError, match=r"model output has shape \(\d, 1\)"):
            call(x)
    # a NaN input is refused by the base class
    xn = x.copy()
    xn[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        TorchBackend(nn.Linear(4, 3)).probabilities(xn)
    # a model that outputs NaN for input 2 (x[:, 0] > 5)
    nan_model = _Lambda(lambda z, a: torch.where(a[:, :1] > 5, torch.nan, z))
    xb = x.copy()
    xb[2, 0] = 10.0
    b = TorchBackend(nan_model, input_shape=(4,))
    for call in (b.probabilities, b.class_gradients, lambda a: b.loss_gradient(a, [0, 0, 0]),
                 lambda a: b.fisher_vector_product(a, a[:, None])):
        with pytest.raises(ValueError, match="non-finite logits for input 2"):
            call(xb)
    # a probabilities model with an exact zero (a hard one-hot for input 2)
    hard = _Lambda(lambda z, a: torch.where(a[:, :1] > 5, nn.functional.one_hot(torch.zeros_like(a[:, 0]).long(), 3)
                                            .to(z.dtype), torch.softmax(z, 1)))
    b = TorchBackend(hard, input_shape=(4,), output="probabilities")
    assert b.probabilities(x).shape == (3, 3)
    for call in (b.probabilities, b.class_gradients, lambda a: b.fisher_vector_product(a, a[:, None])):
        with pytest.raises(ValueError, match="zero or negative probability for input 2"):
            call(xb)
    # logits declared as probabilities / log-probabilities
    with pytest.raises(ValueError, match="do not sum to one"):
        TorchBackend(nn.Sequential(nn.Linear(4, 3), nn.Sigmoid()), output="probabilities").probabilities(x)
    with pytest.raises(ValueError, match="do not sum to one"):
        TorchBackend(nn.Linear(4, 3), output="log_probabilities").probabilities(x)
    with pytest.raises(ValueError, match="classes must lie in"):
        TorchBackend(nn.Linear(4, 3)).class_gradients(x, classes=[3])


def test_missing_torch_raises_import_error(monkeypatch):
    mod = sys.modules[TorchBackend.__module__]
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"pip install 'fisher-ref\[torch\]'"):
        mod.TorchBackend(object())
    assert fb.TorchBackend is TorchBackend


def test_module_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import fisher_ref.backends.torch as m\n"
            "from fisher_ref.backends import TorchBackend\n"
            "try:\n    TorchBackend(None)\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "TorchBackend needs PyTorch: pip install 'fisher-ref[torch]'" in out.stdout


# ---------------------------------------------------------------- features
def _manual_features(model, x, names):
    m = copy.deepcopy(model).double().eval()
    mods = dict(m.named_modules())
    acts = {}
    hooks = [mods[n].register_forward_hook(lambda _m, _i, o, n=n: acts.__setitem__(n, o.detach().clone()))
             for n in names]
    with torch.no_grad():
        m(torch.as_tensor(x))
    for h in hooks:
        h.remove()
    return {n: a.reshape(len(x), -1).numpy() for n, a in acts.items()}


@pytest.mark.parametrize("name,layers", [("small_cnn", ["3", "9", "10"]),
                                         ("tiny_resnet", ["stem", "block.bn1", "block.relu", "pool"])])
def test_features_match_manual_hooks(name, layers, device):
    model = tm.FACTORIES[name](10)
    b = TorchBackend(model, device=device, dtype=torch.float64, feature_layers=layers)
    x = tm.random_inputs(model, 3, seed=10)
    feats = b.features(x)
    ref = _manual_features(model, x, layers)
    assert list(feats) == layers
    for n in layers:
        assert feats[n].shape == ref[n].shape and feats[n].shape[0] == 3
        assert_rel(feats[n], ref[n], 1e-12, n)
    if name == "tiny_resnet":  # bn1's output is taken before the in-place ReLU overwrites it
        assert feats["block.bn1"].min() < 0 and feats["block.relu"].min() >= 0
    one = b.features(x, layers=[layers[1]])
    assert list(one) == [layers[1]]
    assert_rel(one[layers[1]], ref[layers[1]], 1e-12)


def test_feature_errors():
    with pytest.raises(ValueError, match=r"feature_layers must be names.*'block.conv1'"):
        TorchBackend(tm.tiny_resnet(0), feature_layers=["nope"])
    b = TorchBackend(tm.tiny_resnet(0), feature_layers=["pool"])
    with pytest.raises(ValueError, match="layers must be names"):
        b.features(np.zeros((1, 2, 6, 6)), layers=["stem"])
    with pytest.raises(MissingCapabilityError, match="features"):
        TorchBackend(tm.tiny_resnet(0)).features(np.zeros((1, 2, 6, 6)))


# ---------------------------------------------------------------- Monte-Carlo dropout
def test_stochastic_probabilities(device):
    model = tm.small_cnn(11)
    b = TorchBackend(model, device=device, dtype=torch.float64)
    x = tm.random_inputs(model, 3, seed=11)
    p_det = b.probabilities(x)
    state = torch.random.get_rng_state()
    s1 = b.stochastic_probabilities(x, 200, rng=5)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left as it was
    assert s1.shape == (200, 3, 5)
    np.testing.assert_allclose(s1.sum(axis=2), 1.0, atol=1e-12)
    np.testing.assert_array_equal(b.stochastic_probabilities(x, 200, rng=5), s1)
    np.testing.assert_array_equal(b.stochastic_probabilities(x, 3, rng=np.random.default_rng(5)),
                                  b.stochastic_probabilities(x, 3, rng=np.random.default_rng(5)))
    assert not np.allclose(s1[0], s1[1])  # masks differ between samples
    assert not np.allclose(b.stochastic_probabilities(x, 2, rng=6), s1[:2])
    assert np.abs(s1.mean(axis=0) - p_det).max() < 0.1
    # dropout back in eval mode: the deterministic predictions are unchanged
    assert not any(mod.training for mod in b.model.modules())
    np.testing.assert_array_equal(b.probabilities(x), p_det)


def test_stochastic_probabilities_needs_dropout():
    b = TorchBackend(tm.mlp_tanh(0))
    assert not b.supports("stochastic_probabilities")
    with pytest.raises(MissingCapabilityError, match="dropout.*BU"):
        b.stochastic_probabilities(np.zeros((1, 2, 3)), 2)



class _SkipAroundDropout(nn.Module):
    """A deterministic branch (the trunk's features) read after the dropout layer, and a second dropout."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Tanh())
        self.drop1, self.drop2 = nn.Dropout(0.5), nn.Dropout(0.3)
        self.head, self.side = nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, x):
        h = self.trunk(x)
        return self.head(self.drop2(torch.tanh(self.drop1(h)))) + self.side(h)


class _DataDependent(nn.Module):
    """Control flow on a tensor value: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.lin, self.drop, self.out = nn.Linear(6, 8), nn.Dropout(0.5), nn.Linear(8, 4)

    def forward(self, x):
        h = self.lin(x.flatten(1))
        if h.sum() > 0:
            h = -h
        return self.out(self.drop(h))


class _InputDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.drop, self.lin = nn.Dropout(0.2), nn.Linear(6, 4)

    def forward(self, x):
        return self.lin(self.drop(x).flatten(1))


@pytest.mark.parametrize("make,splits", [(_SkipAroundDropout, True), (_DataDependent, False),
                                         (_InputDropout, False), (lambda: tm.small_cnn(11), True)])
def test_stochastic_probabilities_split_at_dropout(make, splits):
    """The deterministic part runs once per input (torch.fx split); the samples equal full forward passes."""
    torch.manual_seed(0)
    model = make()
    shape = getattr(model, "input_shape", (2, 3))
    b = TorchBackend(model, dtype=torch.float64, input_shape=shape)
    x = np.random.default_rng(3).standard_normal((5, *shape))
    fast = b.stochastic_probabilities(x, 20, rng=1)
    assert (b._dropout_parts() is not None) == splits
    b._dropout_split = None  # full forward passes
    whole = b.stochastic_probabilities(x, 20, rng=1)
    np.testing.assert_array_equal(fast, whole)
    assert not np.allclose(fast[0], fast[1])  # the masks still differ between samples
    np.testing.assert_array_equal(b.probabilities(x), TorchBackend(model, dtype=torch.float64,
                                                                   input_shape=b.input_shape).probabilities(x))

# ---------------------------------------------------------------- cross-check with the NumPy reference
@pytest.mark.parametrize("activation,scale", [("tanh", 1.0), ("elu", 1.0), ("tanh", 40.0)])
def test_agrees_with_numpy_mlp(activation, scale, device):
    if not hasattr(fb, "MLPModel"):
        pytest.skip("fisher_ref.backends.MLPModel is not available")
    rng = np.random.default_rng(12)
    sizes = [6, 7, 4]
    layers = [(scale * rng.standard_normal((o, i)) / np.sqrt(i), rng.standard_normal(o) * 0.1)
              for i, o in zip(sizes[:-1], sizes[1:])]
    ref = fb.MLPModel(layers, activation=activation, input_shape=(2, 3))
    act = nn.Tanh() if activation == "tanh" else nn.ELU()
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 7), act, nn.Linear(7, 4)).double()
    with torch.no_grad():
        for lin, (W, bias) in zip([model[1], model[3]], layers):
            lin.weight.copy_(torch.as_tensor(W))
            lin.bias.copy_(torch.as_tensor(bias))
    b = TorchBackend(model, input_shape=(2, 3), device=device, dtype=torch.float64)
    x = rng.standard_normal((4, 2, 3))
    v = rng.standard_normal((4, 3, 2, 3))
    assert_rel(b.probabilities(x), ref.probabilities(x), 1e-10)
    p, g = b.class_gradients(x)
    p_ref, g_ref = ref.class_gradients(x)
    if scale > 1:
        assert p.max() > 1 - 1e-9  # saturated: the dominant class's gradient is tiny, yet accurate
    for j in range(4):  # input by input, class by class, relative to each gradient's own scale
        for c in range(4):
            assert_rel(g[j, c], g_ref[j, c], 1e-10, f"input {j}, class {c}")
    gv, gv_ref = b.fisher_vector_product(x, v), ref.fisher_vector_product(x, v)
    for j in range(4):
        assert_rel(gv[j], gv_ref[j], 1e-10, f"Fisher-vector product, input {j}")


def test_a_softmax_head_read_as_logits_is_warned_about():
    """output='logits' (the default) on a model ending in a softmax would give a wrong Fisher matrix
    silently: the probe forward at construction says so."""
    import warnings

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softmax(dim=1))
    with pytest.warns(UserWarning, match="outputs are non-negative and sum to 1.*pass output='probabilities'"):
        TorchBackend(net, input_shape=(4,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TorchBackend(net, input_shape=(4,), output="probabilities")
        TorchBackend(torch.nn.Linear(4, 3), input_shape=(4,))
