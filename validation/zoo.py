"""Model zoo: production architectures through ``export -> OnnxBackend`` against ``TorchBackend``.

For each model (seeded random weights; no pretrained weights are downloaded) and each exporter,
the ONNX export is read by :class:`~fisher_ref.backends.OnnxBackend` and compared with
:class:`~fisher_ref.backends.TorchBackend` on the same network:

* class gradients: largest difference relative to the largest gradient, beside the same figure for
  TorchBackend float32 against float64 (a model whose float32 gradients are themselves that far
  from float64 is reported as "float32 ill-conditioned", not as a disagreement);
* the top-5 Fisher eigenvalues: largest difference relative to lambda_1;
* the OSSA direction: ``|cos|`` of the two top eigenvectors (the worst input);

and, with ``--audit``, ``fisher_ref.audit.audit`` runs on the export. A model that cannot be
exported or differentiated gets its one-line error (onnx-ad names the operator and node).

Two sets of models:

* :data:`BLOCKS`, always available: the building blocks of the production families, written in
  plain torch at small size (ResNet basic block, MobileNetV2 inverted residual, MobileNetV3 with
  squeeze-excitation and hard-swish, EfficientNet MBConv with SiLU, ShuffleNet channel shuffle,
  DenseNet concatenation, Inception branches, ConvNeXt block with LayerNorm and GELU, a ViT encoder
  with a class token and multi-head attention, Swin window attention, a LayerNorm+GELU MLP, GRU and
  LSTM sequence classifiers, a softmax head);
* :func:`library_models`: torchvision and timm networks themselves (``weights=None`` /
  ``pretrained=False``, 10 classes at 64x64, or 1000 classes at 224x224 with ``--size 224``), when
  those packages are installed.

Run: ``python -m fisher_ref.validation.zoo [--library] [--exporters torchscript dynamo] [--audit]
[--out zoo.json] [--markdown zoo.md]``. Exit status 0 when every model that exported agrees.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .memory import run_measured

#: float32 agreement thresholds (relative) and the least |cos| of the top eigenvectors
TOL_GRADIENTS = 1e-4
TOL_EIGENVALUES = 1e-4
COS_MIN = 0.999
K = 5
#: what the torch network returns, where not logits (TorchBackend's ``output=``)
TORCH_OUTPUT = {"softmax head": "probabilities"}


@dataclass
class Row:
    """One model through one exporter."""

    model: str
    family: str
    exporter: str
    input_shape: tuple
    n_classes: int
    opset: int | None = None            # None: the exporter's default
    batch: int | None = None            # None: a dynamic batch axis
    n_inputs: int = 2                   # inputs compared and audited
    #: "ok", "disagrees", "float32 ill-conditioned" (torch float32 itself is as far from float64),
    #: "export failed", "backend failed", "audit failed"
    status: str = "ok"
    gradient_error: float | None = None      # OnnxBackend against TorchBackend, both float32
    torch_float32_error: float | None = None  # TorchBackend float32 against float64: the model's own float32 noise
    #: the same for the top-5 eigenvalues (measured only for a model that would otherwise disagree)
    torch_float32_eigenvalue_error: float | None = None
    onnx_float64_error: float | None = None   # OnnxBackend (float32) against TorchBackend float64
    eigenvalue_error: float | None = None
    min_cos: float | None = None
    seconds_per_input: float | None = None
    torch_seconds_per_input: float | None = None
    audit_seconds: float | None = None   # `fisher-ref audit` on the row's inputs, the whole command
    audit_peak_gb: float | None = None   # its peak resident memory
    error: str | None = None
    notes: list = field(default_factory=list)


# ---------------------------------------------------------------------------------------- the blocks
def _blocks() -> dict[str, tuple[str, Callable, tuple]]:
    """``{name: (family, builder, input_shape)}`` of the hand-built production blocks."""
    import torch
    from torch import nn

    def conv_bn(cin, cout, k=3, s=1, groups=1, act=nn.ReLU):
        return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), act())

    class Basic(nn.Module):  # ResNet-18/34
        def __init__(self, c):
            super().__init__()
            self.a, self.b = conv_bn(c, c), nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

        def forward(self, x):
            return torch.relu(x + self.b(self.a(x)))

    class InvertedResidual(nn.Module):  # MobileNetV2
        def __init__(self, c, t=4):
            super().__init__()
            self.body = nn.Sequential(conv_bn(c, c * t, 1, act=nn.ReLU6), conv_bn(c * t, c * t, 3, groups=c * t, act=nn.ReLU6),
                                      nn.Conv2d(c * t, c, 1, bias=False), nn.BatchNorm2d(c))

        def forward(self, x):
            return x + self.body(x)

    class SqueezeExcite(nn.Module):  # MobileNetV3 (hard-sigmoid gate) / EfficientNet (sigmoid gate)
        def __init__(self, c, gate=nn.Hardsigmoid, act=nn.ReLU):
            super().__init__()
            self.f = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c // 2, 1), act(), nn.Conv2d(c // 2, c, 1), gate())

        def forward(self, x):
            return x * self.f(x)

    class ChannelShuffle(nn.Module):  # ShuffleNet
        def forward(self, x):
            n, c, h, w = x.shape
            return x.reshape(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)

    class Dense(nn.Module):  # DenseNet
        def __init__(self, c, growth=4):
            super().__init__()
            self.f = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, growth, 3, 1, 1))

        def forward(self, x):
            return torch.cat([x, self.f(x)], 1)

    class Inception(nn.Module):  # GoogLeNet / Inception
        def __init__(self, c):
            super().__init__()
            self.b1, self.b2 = conv_bn(c, 4, 1), nn.Sequential(conv_bn(c, 4, 1), conv_bn(4, 4, 3))
            self.b3 = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(c, 4, 1))

        def forward(self, x):
            return torch.cat([self.b1(x), self.b2(x), self.b3(x)], 1)

    class ChannelsLastNorm(nn.Module):  # ConvNeXt's LayerNorm over channels
        def __init__(self, c):
            super().__init__()
            self.ln = nn.LayerNorm(c)

        def forward(self, x):
            return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    class ConvNeXtBlock(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.dw, self.ln = nn.Conv2d(c, c, 7, 1, 3, groups=c), ChannelsLastNorm(c)
            self.mlp = nn.Sequential(nn.Conv2d(c, 4 * c, 1), nn.GELU(), nn.Conv2d(4 * c, c, 1))
            self.gamma = nn.Parameter(torch.full((1, c, 1, 1), 0.5))

        def forward(self, x):
            return x + self.gamma * self.mlp(self.ln(self.dw(x)))

    class ViT(nn.Module):  # patch embedding, class token, position embedding, pre-norm encoder
        def __init__(self, c=16, patch=4, size=16, classes=5, window=None):
            super().__init__()
            self.embed = nn.Conv2d(3, c, patch, patch)
            n = (size // patch) ** 2
            self.cls, self.pos = nn.Parameter(0.1 * torch.randn(1, 1, c)), nn.Parameter(0.1 * torch.randn(1, n + 1, c))
            self.ln1, self.ln2, self.ln = nn.LayerNorm(c), nn.LayerNorm(c), nn.LayerNorm(c)
            self.attn = nn.MultiheadAttention(c, 4, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))
            self.head = nn.Linear(c, classes)
            self.window, self.side = window, size // patch

        def attend(self, h):
            if self.window is None:
                return self.attn(h, h, h, need_weights=False)[0]
            # Swin: attention within non-overlapping windows of the token grid
            n, _, c = h.shape
            w, s = self.window, self.side
            g = h.reshape(n, s // w, w, s // w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, c)
            out = self.attn(g, g, g, need_weights=False)[0]
            return out.reshape(n, s // w, s // w, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(n, s * s, c)

        def forward(self, x):
            t = self.embed(x).flatten(2).transpose(1, 2)
            if self.window is not None:
                t = t + self.pos[:, 1:]
                t = t + self.attend(self.ln1(t))
                t = t + self.mlp(self.ln2(t))
                return self.head(self.ln(t.mean(1)))
            t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1) + self.pos
            t = t + self.attend(self.ln1(t))
            t = t + self.mlp(self.ln2(t))
            return self.head(self.ln(t[:, 0]))

    class Recurrent(nn.Module):  # a sequence classifier over float features: (batch, time, features)
        def __init__(self, kind, features=4, hidden=8, classes=5):
            super().__init__()
            self.rnn = getattr(nn, kind)(features, hidden, batch_first=True)
            self.head = nn.Linear(hidden, classes)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    def cnn(*body, c=8, classes=5, head_act=None):
        layers = [conv_bn(3, c), *body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(_width(body, c), classes)]
        if head_act is not None:
            layers.append(head_act)
        return nn.Sequential(*layers)

    img = (3, 16, 16)
    return {
        "ResNet basic block": ("ResNet", lambda: cnn(Basic(8), nn.MaxPool2d(2), Basic(8)), img),
        "MobileNetV2 inverted residual": ("MobileNetV2", lambda: cnn(InvertedResidual(8)), img),
        "MobileNetV3 SE + hard-swish": ("MobileNetV3", lambda: cnn(conv_bn(8, 8, 3, groups=8, act=nn.Hardswish),
                                                                   SqueezeExcite(8)), img),
        "EfficientNet MBConv (SiLU, SE)": ("EfficientNet", lambda: cnn(conv_bn(8, 16, 1, act=nn.SiLU),
                                                                       conv_bn(16, 16, 3, groups=16, act=nn.SiLU),
                                                                       SqueezeExcite(16, nn.Sigmoid, nn.SiLU),
                                                                       conv_bn(16, 8, 1, act=nn.Identity)), img),
        "ShuffleNet channel shuffle": ("ShuffleNet", lambda: cnn(conv_bn(8, 8, 1), ChannelShuffle(),
                                                                 conv_bn(8, 8, 3, groups=8)), img),
        "DenseNet concatenation": ("DenseNet", lambda: cnn(Dense(8), Dense(12), nn.AvgPool2d(2)), img),
        "Inception branches": ("Inception/GoogLeNet", lambda: cnn(Inception(8)), img),
        "RegNet group conv": ("RegNet", lambda: cnn(conv_bn(8, 8, 3, groups=2), conv_bn(8, 8, 1)), img),
        "VGG-BN": ("VGG-BN", lambda: cnn(conv_bn(8, 8), nn.MaxPool2d(2), conv_bn(8, 8)), img),
        "ConvNeXt block (LayerNorm, GELU)": ("ConvNeXt", lambda: cnn(ConvNeXtBlock(8)), img),
        "ViT encoder (class token, MHA)": ("ViT/DeiT", lambda: ViT(), img),
        "Swin window attention": ("Swin", lambda: ViT(window=2), img),
        "MLP (LayerNorm, GELU)": ("MLP", lambda: nn.Sequential(nn.Linear(12, 16), nn.LayerNorm(16), nn.GELU(),
                                                                 nn.Linear(16, 5)), (12,)),
        "GRU sequence classifier": ("GRU", lambda: Recurrent("GRU"), (6, 4)),
        "LSTM sequence classifier": ("LSTM", lambda: Recurrent("LSTM"), (6, 4)),
        "softmax head": ("softmax head", lambda: cnn(conv_bn(8, 8), head_act=nn.Softmax(dim=1)), img),
    }


def _width(body, c: int) -> int:
    """Channels after ``body`` (DenseNet and Inception widen it), by a dry run."""
    import torch

    x = torch.zeros(1, c, 8, 8)
    with torch.no_grad():
        for m in body:
            x = m.eval()(x)
    return int(x.shape[1])


BLOCKS = tuple(["ResNet basic block", "MobileNetV2 inverted residual", "MobileNetV3 SE + hard-swish",
                "EfficientNet MBConv (SiLU, SE)", "ShuffleNet channel shuffle", "DenseNet concatenation",
                "Inception branches", "RegNet group conv", "VGG-BN", "ConvNeXt block (LayerNorm, GELU)",
                "ViT encoder (class token, MHA)", "Swin window attention", "MLP (LayerNorm, GELU)",
                "GRU sequence classifier", "LSTM sequence classifier", "softmax head"])


def library_models(size: int = 64) -> dict[str, tuple[str, Callable, tuple]]:
    """torchvision / timm networks with random weights (those installed): 10 classes at ``size``,
    1000 at 224."""
    out: dict = {}
    classes = 1000 if size >= 224 else 10
    try:
        import torchvision.models as tvm
    except Exception:  # noqa: BLE001 - not installed, or a build that does not match torch
        tvm = None
    if tvm is not None:
        for name, family in (("resnet18", "ResNet"), ("mobilenet_v2", "MobileNetV2"),
                             ("mobilenet_v3_small", "MobileNetV3"), ("efficientnet_b0", "EfficientNet"),
                             ("shufflenet_v2_x0_5", "ShuffleNet"), ("densenet121", "DenseNet"),
                             ("regnet_x_400mf", "RegNet"), ("convnext_tiny", "ConvNeXt"), ("vgg11_bn", "VGG-BN"),
                             ("googlenet", "Inception/GoogLeNet")):
            kwargs = dict(weights=None, num_classes=classes)
            if name == "googlenet":
                kwargs.update(aux_logits=False, init_weights=True)
            out[f"torchvision {name}"] = (family, (lambda n=name, kw=kwargs: getattr(tvm, n)(**kw)), (3, size, size))
    try:
        import timm
    except Exception:  # noqa: BLE001
        timm = None
    if timm is not None:
        for name, family in (("vit_tiny_patch16_224", "ViT/DeiT"), ("deit_tiny_patch16_224", "ViT/DeiT"),
                             ("swin_tiny_patch4_window7_224", "Swin")):
            img = size if "swin" not in name else max(size, 224)
            kwargs = dict(pretrained=False, num_classes=classes, img_size=img)
            out[f"timm {name}"] = (family, (lambda n=name, kw=kwargs: timm.create_model(n, **kw)), (3, img, img))
    return out


# ---------------------------------------------------------------------------------------- checking
def _seeded(builder: Callable, seed: int = 0):
    """The network with seeded weights, BatchNorm statistics away from (0, 1), in eval mode."""
    import torch

    torch.manual_seed(seed)
    net = builder()
    g = torch.Generator().manual_seed(seed + 1)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return net.eval()


def _inputs(input_shape: tuple, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *input_shape), dtype=np.float32)


def check(name: str, family: str, builder: Callable, input_shape: tuple, exporter: str, *, n: int = 2,
          opset: int | None = None, batch: int | None = None, audit: bool = False, folder: Path | None = None,
          compare: bool = True, max_memory: str | None = None) -> Row:
    """One model through one exporter (at ``opset``, with a fixed ``batch`` or a dynamic batch axis):
    agreement of OnnxBackend with TorchBackend (unless not ``compare``: then the row's status is
    "audited" when the audit succeeds), and with ``audit`` the audit of the export
    (:func:`audit_in_child`, under ``max_memory`` such as "2G")."""
    import torch

    import fisher_ref as fr
    from fisher_ref.backends import TorchBackend, export_onnx

    net = _seeded(builder)
    tb = TorchBackend(net, input_shape=input_shape, output=TORCH_OUTPUT.get(name, "logits"))
    x = _inputs(input_shape, n)
    row = Row(name, family, exporter, tuple(input_shape), int(tb.probabilities(x[:1]).shape[1]), opset, batch, n)
    folder = Path(folder or tempfile.mkdtemp(prefix="fisher_ref_zoo_"))
    path = folder / f"{abs(hash((name, exporter, opset, batch))):x}.onnx"
    ob = exported_backend(row, lambda: export_onnx(net, input_shape, path, exporter=exporter, opset=opset,
                                                   batch=batch), path)
    if ob is None:
        return row
    if compare:
        t64 = TorchBackend(net, input_shape=input_shape, output=TORCH_OUTPUT.get(name, "logits"), dtype=torch.float64)
        _compare(row, tb, ob, x, fr, t64)
    del ob, tb  # the parent's copies: the audit's memory is the child's alone
    if audit and row.status in AUDITABLE:
        audit_in_child(row, path, x, folder, max_memory=max_memory)
        if not compare and row.status == "ok":
            row.status = "audited"
    return row


def exported_backend(row: Row, export: Callable[[], object], path: Path):
    """``export()`` writes ``path``; its OnnxBackend, or None with the failure recorded in ``row``."""
    from fisher_ref.backends import OnnxBackend

    try:
        export()
    except Exception as exc:  # noqa: BLE001 - the row records any failure
        row.status, row.error = "export failed", _one_line(exc)
        return None
    try:
        ob = OnnxBackend(path)
    except Exception as exc:  # noqa: BLE001
        row.status, row.error = "backend failed", _one_line(exc)
        return None
    if ob.rewritten_:
        row.notes.append("rewritten: " + ", ".join(ob.rewritten_))
    return ob


#: rows whose export the audit runs on: agreeing, or as close as float32 allows
AUDITABLE = ("ok", "float32 ill-conditioned")


def eigenvalue_error(w: np.ndarray, reference: np.ndarray) -> float:
    """Largest difference of the eigenvalues ``w`` from ``reference`` (rows: inputs), relative to
    each input's lambda_1."""
    return float(np.max(np.abs(w - reference) / np.maximum(reference[:, :1], 1e-300)))


def agrees(row: Row) -> bool:
    return (row.gradient_error <= TOL_GRADIENTS and row.eigenvalue_error <= TOL_EIGENVALUES
            and row.min_cos >= COS_MIN)


def mark_float32_ill_conditioned(row: Row, x: np.ndarray, fr, ref32, ref64, w64: np.ndarray | None = None) -> None:
    """For a row that does not agree: when the reference's own float32 model ``ref32`` is as far
    from its float64 one ``ref64`` (class gradients, or the top-5 eigenvalues), the model is float32
    ill-conditioned, not a disagreement. ``w64``: ``ref64``'s eigenvalues when already computed."""
    if row.torch_float32_error is None:
        _, g32 = ref32.class_gradients(x)
        _, g64 = ref64.class_gradients(x.astype(np.float64))
        row.torch_float32_error = float(np.abs(g32 - g64).max() / max(np.abs(g64).max(), 1e-300))
    ill = row.torch_float32_error > TOL_GRADIENTS
    if not ill:
        k = min(K, row.n_classes - 1)
        w64 = fr.fisher_spectrum(x.astype(np.float64), ref64, k=k)[0] if w64 is None else w64
        row.torch_float32_eigenvalue_error = eigenvalue_error(fr.fisher_spectrum(x, ref32, k=k)[0], w64)
        ill = row.torch_float32_eigenvalue_error > TOL_EIGENVALUES
    row.status = "float32 ill-conditioned" if ill else "disagrees"


def _compare(row: Row, tb, ob, x: np.ndarray, fr, t64=None) -> tuple[np.ndarray, np.ndarray]:
    """Fill ``row``'s agreement figures of ``ob`` against ``tb``; returns ``tb``'s class gradients
    and top-5 eigenvalues."""
    _, gt = tb.class_gradients(x)
    _, go = ob.class_gradients(x)
    row.gradient_error = float(np.abs(go - gt).max() / max(np.abs(gt).max(), 1e-300))
    if t64 is not None:
        _, g64 = t64.class_gradients(x.astype(np.float64))
        scale = max(np.abs(g64).max(), 1e-300)
        row.torch_float32_error = float(np.abs(gt - g64).max() / scale)
        row.onnx_float64_error = float(np.abs(go - g64).max() / scale)
    k = min(K, row.n_classes - 1)
    t0 = time.perf_counter()
    wt, vt = fr.fisher_spectrum(x, tb, k=k)
    row.torch_seconds_per_input = (time.perf_counter() - t0) / len(x)
    t0 = time.perf_counter()
    wo, vo = fr.fisher_spectrum(x, ob, k=k)
    row.seconds_per_input = (time.perf_counter() - t0) / len(x)
    row.eigenvalue_error = eigenvalue_error(wo, wt)
    cos = np.abs(np.einsum("nd,nd->n", vt[:, 0].reshape(len(x), -1), vo[:, 0].reshape(len(x), -1)))
    row.min_cos = float(cos.min())
    if not agrees(row):
        row.status = "disagrees"
        if t64 is not None:
            mark_float32_ill_conditioned(row, x, fr, tb, t64)
    return gt, wt


def audit_in_child(row: Row, path: Path, data: np.ndarray, folder: Path, *options: str,
                   max_memory: str | None = None) -> None:
    """``fisher-ref audit`` of the export on ``data`` (saved as .npy), as a user runs it, in a child
    process: ``row.audit_seconds`` (the whole run), ``row.audit_peak_gb`` (the child's own peak
    resident memory, :func:`run_measured`), or ``row.status = "audit failed"`` with the command's
    last error line."""
    data_path, out = folder / f"{path.stem}-data.npy", folder / f"{path.stem}-audit"
    np.save(data_path, data)
    cmd = [sys.executable, "-m", "fisher_ref", "audit", str(path), "--data", str(data_path), "--out", str(out),
           "--k", str(K), "--epsilons", "0.5", "1", "--no-report", "--no-progress", *options]
    if max_memory:
        cmd += ["--max-memory", max_memory]
    log = folder / f"{path.stem}-audit.log"
    returncode, seconds, peak_bytes = run_measured(cmd, log)
    if returncode != 0:
        lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
        row.status = "audit failed"
        row.error = f"fisher-ref audit exit {returncode}: {lines[-1] if lines else '(no output)'}"[:400]
        return
    row.audit_seconds = seconds
    row.audit_peak_gb = peak_bytes / 2**30


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:400]}"


# ---------------------------------------------------------------------------------------- reporting
def markdown(rows: list[Row]) -> str:
    """The README's zoo table: one line per model and exporter."""
    head = ("| model | family | exporter, opset, batch | input | C | result | gradients (torch float32: float64) "
            "| top-5 eigenvalues | min abs cos v1 | s/input ONNX (torch) | audit s/input | audit peak GB |\n"
            "|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|\n")
    lines = []
    for r in rows:
        fmt = (lambda v: "-" if v is None else f"{v:.1e}")
        result = r.status if r.error is None else f"{r.status}: {r.error}"
        speed = "-" if r.seconds_per_input is None else f"{r.seconds_per_input:.3f} ({r.torch_seconds_per_input:.3f})"
        cos = "-" if r.min_cos is None else f"{r.min_cos:.6f}"
        how = f"{r.exporter}, {r.opset or 'default'}, {r.batch or 'dynamic'}"
        per_input = "-" if r.audit_seconds is None else f"{r.audit_seconds / r.n_inputs:.1f}"
        peak = "-" if r.audit_peak_gb is None else f"{r.audit_peak_gb:.2f}"
        lines.append(f"| {r.model} | {r.family} | {how} | {'x'.join(map(str, r.input_shape))} | {r.n_classes} "
                     f"| {result} | {fmt(r.gradient_error)} ({fmt(r.torch_float32_error)}) | {fmt(r.eigenvalue_error)} "
                     f"| {cos} | {speed} | {per_input} | {peak} |")
    return head + "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fisher_ref.validation.zoo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--library", action="store_true", help="also the torchvision and timm networks (when installed)")
    ap.add_argument("--size", type=int, default=64, help="image size of the library networks (224: 1000 classes)")
    ap.add_argument("--only", nargs="+", help="models whose name contains one of these strings")
    ap.add_argument("--exporters", nargs="+", default=["torchscript", "dynamo"], choices=["torchscript", "dynamo"])
    ap.add_argument("--opsets", nargs="+", type=int, default=[None], help="ONNX opsets (default: the exporter's)")
    ap.add_argument("--batch", nargs="+", default=["dynamic"],
                    help="'dynamic' and/or fixed batch sizes to export with (default: dynamic)")
    ap.add_argument("--audit", action="store_true",
                    help="also run `fisher-ref audit` on each export (a child process: seconds, peak memory)")
    ap.add_argument("--audit-only", action="store_true",
                    help="audit each export without comparing it with TorchBackend (the cost at 224x224 and "
                         "1000 classes, where the comparison's C x d Jacobians dominate)")
    ap.add_argument("--max-memory", default=None, metavar="SIZE", help="the audit's --max-memory, e.g. 2G")
    ap.add_argument("--out", help="write the rows as JSON here")
    ap.add_argument("--markdown", help="write the table as Markdown here")
    args = ap.parse_args(argv)
    if args.max_memory is not None:
        from fisher_ref.audit._config import parse_memory
        try:
            parse_memory(args.max_memory, "--max-memory")
        except ValueError as exc:
            ap.error(str(exc))
    if args.size < 16:
        ap.error(f"--size must be at least 16, got {args.size}")
    try:
        batches = [None if b == "dynamic" else int(b) for b in args.batch]
    except ValueError:
        ap.error(f"--batch takes 'dynamic' or positive integers, got {' '.join(args.batch)}")
    if any(b is not None and b < 1 for b in batches):
        ap.error(f"--batch takes 'dynamic' or positive integers, got {' '.join(args.batch)}")
    models = dict(_blocks())
    if args.library:
        models.update(library_models(args.size))
    models = select(models, args.only, ap)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fisher_ref_zoo_") as tmp:
        for i, (name, (family, builder, shape)) in enumerate(models.items(), 1):
            for exporter, opset, batch in itertools.product(args.exporters, args.opsets, batches):
                row = check(name, family, builder, shape, exporter, opset=opset, batch=batch,
                            audit=args.audit or args.audit_only, compare=not args.audit_only,
                            max_memory=args.max_memory, folder=Path(tmp))
                rows.append(row)
                print(f"[{i}/{len(models)}] {name} ({exporter}, opset {opset or 'default'}, batch "
                      f"{batch or 'dynamic'}): {outcome(row)}", flush=True)
    return finish("zoo", rows, args.out, args.markdown)


def select(models: dict, only: list[str] | None, ap: argparse.ArgumentParser) -> dict:
    """The ``models`` whose name contains one of the ``--only`` strings (all without ``--only``)."""
    if not only:
        return models
    chosen = {k: v for k, v in models.items() if any(s.lower() in k.lower() for s in only)}
    if not chosen:
        ap.error(f"--only {' '.join(only)} matches no model")
    return chosen


def outcome(row: Row) -> str:
    """One line: the status and the error, or the agreement (and audit) figures."""
    if row.error:
        return f"{row.status} - {row.error}"
    audit = ("" if row.audit_seconds is None else
             f"; audit {row.audit_seconds / row.n_inputs:.1f} s/input, peak {row.audit_peak_gb:.2f} GB")
    if row.gradient_error is None:
        return row.status + audit
    f64 = "" if row.onnx_float64_error is None else f" (float64 {row.onnx_float64_error:.1e})"
    return (f"{row.status}, gradients {row.gradient_error:.1e}{f64}, eigenvalues {row.eigenvalue_error:.1e}, "
            f"|cos| {row.min_cos:.6f}{audit}")


def finish(prog: str, rows: list[Row], out: str | None, md: str | None) -> int:
    """Write the rows (JSON, Markdown) where asked, print the count; exit status 1 when one disagrees."""
    if out:
        Path(out).write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    if md:
        Path(md).write_text(markdown(rows))
    n = Counter(r.status for r in rows)
    ok, bad, ill, audited = n["ok"], n["disagrees"], n["float32 ill-conditioned"], n["audited"]
    extra = ""
    if ill:
        extra += f"; {ill} float32 ill-conditioned (torch or TensorFlow float32 itself as far from float64)"
    if audited:
        extra += f"; {audited} audited (not compared)"
    print(f"{prog}: {ok} of {len(rows)} agree; {bad} disagree{extra}; "
          f"{len(rows) - ok - bad - ill - audited} could not be run")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
