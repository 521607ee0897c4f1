"""Tiny PyTorch classifiers with deterministic random weights, for the backend tests.

Shared by the torch and ONNX backend tests. Every factory takes a ``seed`` (same seed, same
weights, whatever the global torch RNG state) and an optional ``head``:

* ``None``: the model returns logits;
* ``"softmax"``: the same model followed by ``nn.Softmax`` (it returns probabilities);
* ``"log_softmax"``: followed by ``nn.LogSoftmax`` (it returns log-probabilities).

The weights do not depend on ``head``, so the three variants of one seed define the same
classifier. Models are float32, in eval mode, and carry their one-input shape as the plain
attribute ``model.input_shape``. This module imports torch at top level: import it after
``pytest.importorskip("torch")``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["mlp_tanh", "mlp_elu", "small_cnn", "tiny_resnet", "FACTORIES", "HEADS", "random_inputs",
           "output_kind"]

#: Values of ``head`` and the ``output=`` each one needs on the backend.
HEADS = {None: "logits", "softmax": "probabilities", "log_softmax": "log_probabilities"}


def output_kind(head: str | None) -> str:
    """The backend's ``output=`` argument for a model built with ``head``."""
    return HEADS[head]


def _finish(body: nn.Module, input_shape: tuple[int, ...], head: str | None) -> nn.Module:
    if head not in HEADS:
        raise ValueError(f"head must be one of {list(HEADS)}, got {head!r}")
    layers = [body]
    if head == "softmax":
        layers.append(nn.Softmax(dim=1))
    elif head == "log_softmax":
        layers.append(nn.LogSoftmax(dim=1))
    model = body if head is None else nn.Sequential(*layers)
    model.input_shape = tuple(input_shape)
    return model.eval()


def _build(seed: int, make):
    """Run ``make()`` with torch's global RNG seeded by ``seed``, restoring the RNG afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def mlp_tanh(seed: int = 0, *, head: str | None = None, input_shape=(2, 3), hidden=(8, 7),
             n_classes: int = 4) -> nn.Module:
    """``Flatten -> Linear -> Tanh -> Linear -> Tanh -> Linear`` on inputs of shape ``input_shape``."""
    def make():
        sizes = [int(np.prod(input_shape)), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for i, o in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(i, o), nn.Tanh()]
        layers.append(nn.Linear(sizes[-1], n_classes))
        return nn.Sequential(*layers)
    return _finish(_build(seed, make), input_shape, head)


def mlp_elu(seed: int = 0, *, head: str | None = None, input_shape=(5,), hidden=(9,),
            n_classes: int = 3) -> nn.Module:
    """``Linear -> ELU -> Dropout -> Linear`` on flat inputs (the dropout is inactive in eval mode)."""
    def make():
        d = int(np.prod(input_shape))
        return nn.Sequential(nn.Flatten(), nn.Linear(d, hidden[0]), nn.ELU(), nn.Dropout(0.25),
                             nn.Linear(hidden[0], n_classes))
    return _finish(_build(seed, make), input_shape, head)


def _randomise_batchnorm(bn: nn.modules.batchnorm._BatchNorm) -> None:
    with torch.no_grad():
        bn.running_mean.normal_(0.0, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_(1.0, 0.2)
        bn.bias.normal_(0.0, 0.2)


def small_cnn(seed: int = 0, *, head: str | None = None, n_classes: int = 5) -> nn.Module:
    """A small CNN on ``(1, 8, 8)`` images: Conv, BatchNorm (eval), ReLU, MaxPool, AvgPool, Dropout, Linear."""
    def make():
        m = nn.Sequential(
            nn.Conv2d(1, 3, 3, padding=1),
            nn.BatchNorm2d(3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Linear(16, 12),
            nn.ReLU(),
            nn.Linear(12, n_classes),
        )
        _randomise_batchnorm(m[1])
        return m
    return _finish(_build(seed, make), (1, 8, 8), head)


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)  # in-place on purpose: the transforms must cope
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return torch.relu(x + self.conv2(self.relu(self.bn1(self.conv1(x)))))


class TinyResNet(nn.Module):
    """Stem conv, one residual block (an add), global average pooling and a linear classifier."""

    def __init__(self, in_channels: int = 2, channels: int = 4, n_classes: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.act = nn.Tanh()
        self.block = _ResidualBlock(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, n_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.block(self.act(self.stem(x))))))


def tiny_resnet(seed: int = 0, *, head: str | None = None, n_classes: int = 3) -> nn.Module:
    """A residual net on ``(2, 6, 6)`` inputs with an add and global average pooling."""
    def make():
        m = TinyResNet(2, 4, n_classes)
        _randomise_batchnorm(m.block.bn1)
        return m
    return _finish(_build(seed, make), (2, 6, 6), head)


#: name -> factory, for parametrised tests.
FACTORIES = {"mlp_tanh": mlp_tanh, "mlp_elu": mlp_elu, "small_cnn": small_cnn, "tiny_resnet": tiny_resnet}


def random_inputs(model: nn.Module, n: int, seed: int = 0) -> np.ndarray:
    """``n`` standard normal float64 inputs of shape ``model.input_shape``."""
    return np.random.default_rng(seed).standard_normal((n, *model.input_shape))
