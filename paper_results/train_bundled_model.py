#!/usr/bin/env python
"""Train the models bundled in ``fisher_ref/data`` and write the bundled MNIST sample.

Run from the repository root (needs torch, onnx, onnxruntime, tqdm and the MNIST IDX files; about
one minute on 2 idle CPU cores):

    python paper_results/train_bundled_model.py

Writes into ``fisher_ref/data/`` (``--out-dir``):

* ``mnist_mlp_tanh.npz`` - MLP 784-100-10, tanh hidden layer: float32 ``W0, b0, W1, b1`` (``W`` of
  shape (out, in), as ``nn.Linear.weight``) plus metadata (``activation``, ``input_shape``,
  ``test_accuracy``, ``command``, ...); read by ``fisher_ref.backends.MLPModel.load``;
* ``mnist_mlp_tanh.onnx`` - the same MLP; input ``input`` (batch, 1, 28, 28) float32, output
  ``logits`` (batch, 10), dynamic batch dimension, opset 17;
* ``mnist_lenet.pt`` (state dict) and ``mnist_lenet.onnx`` - LeNet-5 (conv 6@5x5 pad 2, relu,
  maxpool 2, conv 16@5x5, relu, maxpool 2, fc 120, relu, fc 84, relu, dropout 0.5, fc 10); the layout
  of ``fisher_ref.backends.torch_models.lenet5(dropout=0.5)``. The ONNX graph is the eval-mode
  network (dropout is the identity there); sample dropout masks with the torch model;
* ``mnist_sample.npz`` - 500 MNIST test images (the first 50 of each class, in test-set order),
  uint8 ``images`` (500, 28, 28), ``labels``, ``indices`` (into the test set);
* ``README.md`` - what was trained, the test accuracies, the command, file sizes, the MNIST licence.

Pixels are in [0, 1] (uint8 / 255), no mean/std normalisation. Everything is seeded (``--seed``).
``--sample-only`` writes only ``mnist_sample.npz``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))

from fisher_ref.datasets import MNIST_LICENSE, load_mnist  # noqa: E402

OPSET = 17
SAMPLE_PER_CLASS = 50


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None, help="folder with the MNIST IDX files (default: the shared data)")
    p.add_argument("--out-dir", default=str(REPO / "fisher_ref" / "data"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mlp-epochs", type=int, default=15)
    p.add_argument("--lenet-epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--sample-only", action="store_true", help="write only mnist_sample.npz")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    return p.parse_args(argv)


def command_line(args) -> str:
    cmd = "python paper_results/train_bundled_model.py"
    defaults = vars(parse_args([]))
    for k, v in vars(args).items():
        if k != "out_dir" and v != defaults[k]:
            cmd += f" --{k.replace('_', '-')}" + ("" if isinstance(v, bool) else f" {v}")
    return cmd


# ------------------------------------------------------------------------------------------ sample
def write_sample(out_dir: Path, x_test: np.ndarray, y_test: np.ndarray) -> Path:
    idx = np.sort(np.concatenate([np.flatnonzero(y_test == c)[:SAMPLE_PER_CLASS] for c in range(10)]))
    path = out_dir / "mnist_sample.npz"
    np.savez_compressed(path, images=x_test[idx], labels=y_test[idx].astype(np.int64), indices=idx.astype(np.int64),
                        source=np.array(f"MNIST test set: the first {SAMPLE_PER_CLASS} images of each class, in "
                                        f"test-set order. {MNIST_LICENSE}"))
    return path


# ------------------------------------------------------------------------------------------ models
def make_mlp(nn):
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.Tanh(), nn.Linear(100, 10))


def make_lenet(nn):
    # same layout (and state-dict keys) as fisher_ref.backends.torch_models.lenet5(dropout=0.5)
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Dropout(0.5), nn.Linear(84, 10))


def train(torch, model, x, y, *, epochs, batch_size, lr, seed, name, progress):
    """Adam with a cosine learning-rate decay to 0; returns the training time in seconds."""
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    loss_fn = torch.nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        bar = tqdm(range(0, len(x), batch_size), desc=f"{name} epoch {epoch + 1}/{epochs}", disable=not progress,
                   leave=False, mininterval=1.0)
        total = 0.0
        for i in bar:
            b = perm[i:i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[b]), y[b])
            loss.backward()
            opt.step()
            sched.step()
            lv = loss.detach().item()
            total += lv * len(b)
            bar.set_postfix(loss=f"{lv:.4f}", refresh=False)
        print(f"  {name} epoch {epoch + 1:2d}/{epochs}: training loss {total / len(x):.4f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    model.eval()
    return time.perf_counter() - t0


def accuracy(torch, model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    return float((pred == y).double().mean())


def export_onnx(torch, model, path: Path, props: dict) -> None:
    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(path), input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)
    m = onnx.load(str(path))
    onnx.helper.set_model_props(m, {k: str(v) for k, v in props.items()})
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))


def onnx_logits(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(["logits"], {"input": x[i:i + 1000]})[0] for i in range(0, len(x), 1000)])


def human_size(n: int) -> str:
    return f"{n / 1024:.0f} KiB" if n < 1024 ** 2 else f"{n / 1024 ** 2:.2f} MiB"


# -------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    x_test_u8, y_test_np = load_mnist(args.data_dir, "test")
    sample_path = write_sample(out_dir, x_test_u8, y_test_np)
    print(f"wrote {sample_path} ({human_size(sample_path.stat().st_size)})")
    if args.sample_only:
        return 0

    import torch
    from torch import nn

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    cmd = command_line(args)
    x_train_u8, y_train_np = load_mnist(args.data_dir, "train")
    to_x = lambda a: torch.from_numpy(a.astype(np.float32)[:, None] / np.float32(255))  # noqa: E731
    x_train, y_train = to_x(x_train_u8), torch.from_numpy(y_train_np)
    x_test, y_test = to_x(x_test_u8), torch.from_numpy(y_test_np)
    with np.load(sample_path) as f:
        x_sample = f["images"].astype(np.float32)[:, None] / np.float32(255)
    print(f"MNIST: {len(x_train)} training, {len(x_test)} test images; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, seed {args.seed}")
    common = dict(batch_size=args.batch_size, lr=args.lr, seed=args.seed, progress=not args.no_progress)
    results = {}

    # (a) MLP 784-100-10, tanh
    torch.manual_seed(args.seed)
    mlp = make_mlp(nn)
    t_mlp = train(torch, mlp, x_train, y_train, epochs=args.mlp_epochs, name="MLP", **common)
    acc_mlp = accuracy(torch, mlp, x_test, y_test)
    print(f"MLP 784-100-10 (tanh): test accuracy {acc_mlp:.2%} ({t_mlp:.0f} s)")
    lin0, lin1 = mlp[1], mlp[3]
    meta = dict(test_accuracy=acc_mlp, seed=args.seed, epochs=args.mlp_epochs, command=cmd,
                torch_version=torch.__version__, licence=MNIST_LICENSE)
    np.savez_compressed(
        out_dir / "mnist_mlp_tanh.npz",
        W0=lin0.weight.detach().numpy().astype(np.float32), b0=lin0.bias.detach().numpy().astype(np.float32),
        W1=lin1.weight.detach().numpy().astype(np.float32), b1=lin1.bias.detach().numpy().astype(np.float32),
        activation=np.array("tanh"), input_shape=np.array([1, 28, 28], dtype=np.int64),
        pixel_range=np.array([0.0, 1.0]), test_accuracy=np.array(acc_mlp), seed=np.array(args.seed),
        epochs=np.array(args.mlp_epochs), command=np.array(cmd), torch_version=np.array(torch.__version__),
        licence=np.array(MNIST_LICENSE))
    export_onnx(torch, mlp, out_dir / "mnist_mlp_tanh.onnx",
                dict(meta, architecture="Flatten, Linear(784, 100), Tanh, Linear(100, 10)", pixel_range="[0, 1]"))
    results["mlp"] = (mlp, acc_mlp, t_mlp, "mnist_mlp_tanh.onnx")

    # (b) LeNet-5 with dropout before the last layer
    torch.manual_seed(args.seed)
    lenet = make_lenet(nn)
    t_lenet = train(torch, lenet, x_train, y_train, epochs=args.lenet_epochs, name="LeNet", **common)
    acc_lenet = accuracy(torch, lenet, x_test, y_test)
    print(f"LeNet-5 (relu, dropout 0.5): test accuracy {acc_lenet:.2%} ({t_lenet:.0f} s)")
    torch.save(lenet.state_dict(), out_dir / "mnist_lenet.pt")
    export_onnx(torch, lenet, out_dir / "mnist_lenet.onnx",
                dict(test_accuracy=acc_lenet, seed=args.seed, epochs=args.lenet_epochs, command=cmd,
                     torch_version=torch.__version__, licence=MNIST_LICENSE, pixel_range="[0, 1]",
                     architecture="fisher_ref.backends.torch_models.lenet5(dropout=0.5), eval mode"))
    results["lenet"] = (lenet, acc_lenet, t_lenet, "mnist_lenet.onnx")

    # checks: ONNX Runtime against torch on the sample, and the ONNX test accuracy
    import onnxruntime

    ok = True
    for name, (model, acc, _, fname) in results.items():
        with torch.no_grad():
            ref = model(torch.from_numpy(x_sample)).numpy()
        diff = float(np.max(np.abs(onnx_logits(out_dir / fname, x_sample) - ref)))
        acc_onnx = float(np.mean(onnx_logits(out_dir / fname, x_test.numpy()).argmax(1) == y_test_np))
        print(f"{fname}: onnxruntime {onnxruntime.__version__} vs torch on the sample, max |logit diff| = "
              f"{diff:.1e}; ONNX test accuracy {acc_onnx:.2%}")
        ok &= diff <= 1e-5 and acc_onnx == acc
    write_readme(out_dir, cmd, args, acc_mlp, t_mlp, acc_lenet, t_lenet, torch.__version__)
    print(f"wrote {out_dir / 'README.md'}")
    if not ok:
        print("ERROR: ONNX export does not match torch", file=sys.stderr)
        return 1
    return 0


def write_readme(out_dir: Path, cmd, args, acc_mlp, t_mlp, acc_lenet, t_lenet, torch_version) -> None:
    files = ["mnist_sample.npz", "mnist_mlp_tanh.npz", "mnist_mlp_tanh.onnx", "mnist_lenet.pt", "mnist_lenet.onnx"]
    sizes = {f: (out_dir / f).stat().st_size for f in files}
    rows = "\n".join(f"| `{f}` | {sizes[f]:,} bytes ({human_size(sizes[f])}) |" for f in files)
    text = f"""# Bundled data and models

Made by `paper_results/train_bundled_model.py`, run from the repository root as

    {cmd}

(torch {torch_version}, {args.threads} CPU threads, seed {args.seed}; Adam, learning rate {args.lr} with cosine
decay to 0, batch size {args.batch_size}; trained on the full MNIST training set, 60,000 images, pixels
uint8 / 255 in [0, 1], no normalisation; evaluated on the full MNIST test set, 10,000 images).

| file | what |
|---|---|
| `mnist_sample.npz` | 500 MNIST test images: the first {SAMPLE_PER_CLASS} of each class, in test-set order. `images` uint8 (500, 28, 28), `labels` int64, `indices` (positions in the test set). Read with `fisher_ref.datasets.load_bundled_mnist()`. |
| `mnist_mlp_tanh.npz` | MLP 784-100-10, tanh hidden layer (`nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.Tanh(), nn.Linear(100, 10))`), {args.mlp_epochs} epochs: float32 `W0` (100, 784), `b0`, `W1` (10, 100), `b1` (`W` as `nn.Linear.weight`, (out, in)), plus `activation`, `input_shape`, `test_accuracy`, `command`, ... Read with `fisher_ref.backends.MLPModel.load`. |
| `mnist_mlp_tanh.onnx` | The same MLP in ONNX (opset {OPSET}): input `input` float32 (batch, 1, 28, 28), output `logits` (batch, 10), dynamic batch. |
| `mnist_lenet.pt` | LeNet-5 state dict (`torch.load(..., weights_only=True)`), {args.lenet_epochs} epochs: conv 6@5x5 pad 2, relu, maxpool 2, conv 16@5x5, relu, maxpool 2, linear 120, relu, linear 84, relu, dropout 0.5, linear 10; the layout of `fisher_ref.backends.torch_models.lenet5(dropout=0.5)`. |
| `mnist_lenet.onnx` | The same LeNet-5 in ONNX (opset {OPSET}), eval mode (dropout is the identity), same input/output names and shapes as the MLP. |

## Test accuracy (MNIST test set, 10,000 images)

| model | test accuracy | training time (wall clock) |
|---|---|---|
| MLP 784-100-10 (tanh) | {acc_mlp:.2%} | {t_mlp:.0f} s |
| LeNet-5 (relu, dropout 0.5) | {acc_lenet:.2%} | {t_lenet:.0f} s |

Training times are wall clock on the machine that ran the script (about one minute in all on 2 idle
cores). The ONNX files give the same logits as torch to within 1e-5 on the sample (checked by the script
with ONNX Runtime) and the same test accuracy.

## Sizes

| file | size |
|---|---|
{rows}
| total | {sum(sizes.values()):,} bytes ({human_size(sum(sizes.values()))}) |

## Licence

The MNIST images (and the models trained on them) derive from the MNIST database of handwritten
digits by Yann LeCun and Corinna Cortes, available under the Creative Commons
Attribution-Share Alike 3.0 licence (CC BY-SA 3.0). The sample here is a subset of the MNIST test
set, unchanged.
"""
    (out_dir / "README.md").write_text(text)


if __name__ == "__main__":
    sys.exit(main())
