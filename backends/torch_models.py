"""Torch architectures of the paper's experiments (torch imported lazily, inside the factories).

* :func:`lenet5` - LeNet-5 for MNIST (1 x 28 x 28, 10 classes), ReLU or ELU;
* :func:`vgg_cifar` - the paper's shallow VGG for CIFAR-10: VGG-16 with conv4-1 to conv5-3
  removed (conv64 x 2, conv128 x 2, conv256 x 3, each block followed by 2 x 2 max-pooling), then
  two fully connected layers; ``width`` scales the channels (1.0 is VGG-16's);
* :func:`vgg_mnist` - the same shape of network for 1 x 28 x 28 inputs (the paper's Table 3 "VGG");
* :func:`resnet` - an ImageNet-shaped ResNet (3 x 224 x 224, 1000 classes), basic blocks
  (ResNet-18/34) or bottleneck blocks (ResNet-50/101/152), ``width`` scaling the channels.

All return a ``torch.nn.Module`` in eval mode with deterministic initial weights for a given
``seed``; trained weights come from the project's scripts (``paper_results/``).
"""

from __future__ import annotations

import importlib

__all__ = ["lenet5", "vgg_cifar", "vgg_mnist", "resnet"]

_RESNET_LAYERS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
                  101: ("bottleneck", (3, 4, 23, 3)), 152: ("bottleneck", (3, 8, 36, 3))}


def _torch():
    try:
        return importlib.import_module("torch")
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("these models need PyTorch: pip install 'fisher-ref[torch]'") from exc


def _act(name: str):
    nn = _torch().nn
    if name == "relu":
        return nn.ReLU()
    if name == "elu":
        return nn.ELU()
    raise ValueError(f"activation must be 'relu' or 'elu', got {name!r}")


def lenet5(*, activation: str = "relu", dropout: float = 0.0, seed: int = 0):
    """LeNet-5 (conv 6@5x5 pad 2, pool, conv 16@5x5, pool, fc 120, fc 84, fc 10) for 1 x 28 x 28."""
    torch = _torch()
    nn = torch.nn
    torch.manual_seed(seed)
    layers = [nn.Conv2d(1, 6, 5, padding=2), _act(activation), nn.MaxPool2d(2),
              nn.Conv2d(6, 16, 5), _act(activation), nn.MaxPool2d(2), nn.Flatten(),
              nn.Linear(16 * 5 * 5, 120), _act(activation), nn.Linear(120, 84), _act(activation)]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(84, 10))
    return nn.Sequential(*layers).eval()


def _vgg(in_ch: int, size: int, n_classes: int, width: float, activation: str, batch_norm: bool,
         dropout: float, seed: int, hidden: int):
    torch = _torch()
    nn = torch.nn
    torch.manual_seed(seed)
    cfg = [[64, 64], [128, 128], [256, 256, 256]]  # VGG-16 blocks 1-3 (conv4-1 .. conv5-3 removed)
    layers, c = [], in_ch
    for block in cfg:
        for ch in block:
            ch = max(1, int(round(ch * width)))
            layers.append(nn.Conv2d(c, ch, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(ch))
            layers.append(_act(activation))
            c = ch
        layers.append(nn.MaxPool2d(2))
        size //= 2
    h = max(1, int(round(hidden * width)))
    layers += [nn.Flatten(), nn.Dropout(dropout), nn.Linear(c * size * size, h), _act(activation),
               nn.Dropout(dropout), nn.Linear(h, n_classes)]
    return nn.Sequential(*layers).eval()


def vgg_cifar(*, width: float = 1.0, activation: str = "relu", batch_norm: bool = True, dropout: float = 0.5,
              n_classes: int = 10, seed: int = 0):
    """The paper's shallow VGG for CIFAR-10 (3 x 32 x 32): VGG-16 without conv4-1 .. conv5-3."""
    return _vgg(3, 32, n_classes, width, activation, batch_norm, dropout, seed, hidden=512)


def vgg_mnist(*, width: float = 0.5, activation: str = "relu", batch_norm: bool = True, dropout: float = 0.5,
              seed: int = 0):
    """The same VGG shape for MNIST (1 x 28 x 28, 10 classes): the paper's Table 3 "VGG"."""
    return _vgg(1, 28, 10, width, activation, batch_norm, dropout, seed, hidden=512)


def resnet(depth: int = 18, *, width: float = 1.0, n_classes: int = 1000, seed: int = 0):
    """An ImageNet-shaped ResNet (3 x 224 x 224 inputs) of the given depth (18, 34, 50, 101, 152)."""
    torch = _torch()
    nn = torch.nn
    if depth not in _RESNET_LAYERS:
        raise ValueError(f"depth must be one of {sorted(_RESNET_LAYERS)}, got {depth!r}")
    kind, counts = _RESNET_LAYERS[depth]
    expansion = 1 if kind == "basic" else 4
    torch.manual_seed(seed)

    class Block(nn.Module):
        def __init__(self, cin, ch, stride):
            super().__init__()
            cout = ch * expansion
            if kind == "basic":
                self.body = nn.Sequential(nn.Conv2d(cin, ch, 3, stride, 1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(),
                                          nn.Conv2d(ch, ch, 3, 1, 1, bias=False), nn.BatchNorm2d(ch))
            else:
                self.body = nn.Sequential(nn.Conv2d(cin, ch, 1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(),
                                          nn.Conv2d(ch, ch, 3, stride, 1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(),
                                          nn.Conv2d(ch, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.skip = (nn.Identity() if stride == 1 and cin == cout else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.body(x) + self.skip(x))

    base = max(4, int(round(64 * width)))
    layers = [nn.Conv2d(3, base, 7, 2, 3, bias=False), nn.BatchNorm2d(base), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = base
    for i, n in enumerate(counts):
        ch = base * 2 ** i
        for j in range(n):
            layers.append(Block(cin, ch, 2 if (j == 0 and i > 0) else 1))
            cin = ch * expansion
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, n_classes)]
    model = nn.Sequential(*layers)
    # BatchNorm statistics of an untrained net are 0/1: give them per-channel spread so that the
    # eval-mode network is not trivially the identity on the statistics
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()
