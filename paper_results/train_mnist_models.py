#!/usr/bin/env python
"""Train the MNIST networks of the paper's Table 3: VGG, LeNet-adv and VGG-adv.

Run from the repository root (needs torch and tqdm, and the MNIST IDX files of the shared data, or
the same files through ``--data-dir``):

    python paper_results/train_mnist_models.py --model vgg
    python paper_results/train_mnist_models.py --model lenet-adv
    python paper_results/train_mnist_models.py --model vgg-adv

"LeNet" of Table 3 is the bundled LeNet-5 (``fisher_ref/data/mnist_lenet.pt``, made by
``train_bundled_model.py``). The others, as the paper's Section 3.4:

* ``vgg`` - ``vgg_mnist(width=0.25)``: VGG-16 without conv4-1 .. conv5-3, ReLU, batch norm, for
  1 x 28 x 28 inputs (a quarter of VGG-16's channel width, for the 2-core CPU);
* ``lenet-adv`` - ``lenet5(activation="elu", dropout=0.5)``, FGM adversarial training;
* ``vgg-adv`` - ``vgg_mnist(width=0.25, activation="elu")``, FGM adversarial training.

"ReLU replaced by ELU, adversarial training using FGM" (the paper): each step's loss is
``(CE(x) + CE(x_fgm)) / 2`` with ``x_fgm = clip(x + eps g / ||g||_2, 0, 1)``, ``g`` the input gradient
of the cross-entropy at the current weights (l2 FGM, the paper's norm) and ``eps`` drawn per example
uniformly from ``[0, --adv-epsilon]`` (default 3.0, so training covers the evaluated eps = 2.0).

Training: Adam, linear warm-up (half an epoch) then cosine decay to 0, batch 128, no augmentation.
Pixels uint8 / 255 in [0, 1], no normalisation. Seeded (``--seed``); resumable after every epoch
(checkpoints in ``paper_results/models/checkpoints/``, as ``train_cifar_vgg.py``; ``--restart``
ignores one). Writes ``paper_results/models/mnist_<model>.pt`` (float32 state dict) and ``.json``
(test accuracy on all 10,000 MNIST test images after reloading into a fresh network, history, time,
command).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout
    sys.path.insert(0, str(REPO))

from fisher_ref.datasets import load_mnist  # noqa: E402
from paper_results.train_cifar_vgg import (add_run_arguments, cosine_schedule, human_size, resume,  # noqa: E402
                                          save_atomic, save_checkpoint, sha256)

MODELS = {
    # name: (factory name, keyword arguments, adversarial training, default epochs)
    "vgg": ("vgg_mnist", dict(width=0.25, activation="relu"), False, 4),
    "lenet-adv": ("lenet5", dict(activation="elu", dropout=0.5), True, 12),
    "vgg-adv": ("vgg_mnist", dict(width=0.25, activation="elu"), True, 4),
    # the plain ELU variants (not in the paper; they separate the effect of ELU from that of training)
    "lenet-elu": ("lenet5", dict(activation="elu", dropout=0.5), False, 12),
}
_CONFIG_KEYS = ("model", "epochs", "batch_size", "lr", "adv_epsilon", "train_limit", "seed", "data_dir")
EVAL_BATCH = 1000


def default_out(model: str) -> Path:
    return REPO / "paper_results" / "models" / f"mnist_{model.replace('-', '_')}.pt"


def build(model: str, seed: int = 0):
    """A fresh network of Table 3's ``model`` (``vgg``, ``lenet-adv``, ``vgg-adv``, ``lenet-elu``)."""
    from fisher_ref.backends import torch_models

    factory, kwargs, _, _ = MODELS[model]
    return getattr(torch_models, factory)(seed=seed, **kwargs)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), required=True)
    p.add_argument("--data-dir", default=None, help="folder with the MNIST IDX files (default: the shared data)")
    p.add_argument("--epochs", type=int, default=None, help="default: 4 for the VGGs, 12 for LeNet")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (Adam)")
    p.add_argument("--adv-epsilon", type=float, default=3.0,
                   help="l2 FGM radius of adversarial training: eps ~ U[0, this] per example (adv models only)")
    p.add_argument("--train-limit", type=int, default=None, help="train on the first N training images only")
    add_run_arguments(p, "paper_results/models/mnist_<model>.pt")
    args = p.parse_args(argv)
    if args.epochs is None:
        args.epochs = MODELS[args.model][3]
    if args.epochs < 1 or args.batch_size < 1 or args.adv_epsilon < 0:
        p.error("--epochs and --batch-size must be positive and --adv-epsilon non-negative")
    if not MODELS[args.model][2]:
        args.adv_epsilon = 0.0
    return args


def command_line(args) -> str:
    cmd = f"python paper_results/train_mnist_models.py --model {args.model}"
    defaults = vars(parse_args(["--model", args.model]))
    skip = {"model", "restart", "pause_after", "no_progress", "checkpoint_dir"}
    for k, v in vars(args).items():
        if k in skip or v == defaults[k]:
            continue
        if k == "out" and Path(v).resolve() == default_out(args.model).resolve():
            continue
        cmd += f" --{k.replace('_', '-')}" + ("" if isinstance(v, bool) else f" {v}")
    return cmd


def fgm_l2(torch, model, xb, yb, eps):
    """l2 FGM examples ``clip(x + eps g/||g||, 0, 1)`` at the current weights (``eps`` per example)."""
    xr = xb.detach().requires_grad_(True)
    was_training = model.training
    model.eval()  # the gradient of the deployed (eval-mode) network, as the attack will use
    loss = torch.nn.functional.cross_entropy(model(xr), yb, reduction="sum")
    (g,) = torch.autograd.grad(loss, xr)
    model.train(was_training)
    norm = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return (xb + eps.view(-1, 1, 1, 1) * g / norm).clamp(0.0, 1.0).detach()


def evaluate(torch, model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + EVAL_BATCH]).argmax(1) for i in range(0, len(x), EVAL_BATCH)])
    return float((pred == y).double().mean())


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else default_out(args.model)
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else out.parent / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = ckpt_dir / f"{out.stem}.ckpt.pt"
    cmd = command_line(args)
    config = {k: getattr(args, k) for k in _CONFIG_KEYS}
    config["architecture"] = repr(MODELS[args.model][:2])
    adversarial = MODELS[args.model][2]

    xtr, ytr = load_mnist(args.data_dir, "train", limit=args.train_limit)
    xte, yte = load_mnist(args.data_dir, "test")
    x_train = torch.from_numpy(xtr).float().div_(255.0).unsqueeze(1)
    y_train = torch.from_numpy(ytr)
    x_test = torch.from_numpy(xte).float().div_(255.0).unsqueeze(1)
    y_test = torch.from_numpy(yte)
    n_train = len(x_train)

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    model = build(args.model, seed=args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = math.ceil(n_train / args.batch_size)
    sched = cosine_schedule(torch, opt, steps_per_epoch, args.epochs, max(1, steps_per_epoch // 2))
    loss_fn = torch.nn.CrossEntropyLoss()
    state = resume(torch, ckpt_path, config, model, opt, sched, args)
    if state is None:
        return 2
    start_epoch, history, train_seconds = state

    print(f"MNIST: {n_train} training images, {len(x_test)} test images; {args.model} ({MODELS[args.model][0]}"
          f"{MODELS[args.model][1]}) {n_params:,} parameters; adversarial training: "
          f"{'l2 FGM, eps ~ U[0, %g]' % args.adv_epsilon if adversarial else 'no'}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, seed {args.seed}", flush=True)

    stop = args.epochs if args.pause_after is None else min(args.epochs, start_epoch + args.pause_after)
    for epoch in range(start_epoch, stop):
        t0 = time.perf_counter()
        model.train()
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + epoch)
        perm = torch.randperm(n_train, generator=gen)
        bar = tqdm(range(0, n_train, args.batch_size), desc=f"{args.model} epoch {epoch + 1}/{args.epochs}",
                   disable=args.no_progress, leave=False, mininterval=2.0)
        loss_sum, correct, adv_correct = 0.0, 0, 0
        for i in bar:
            idx = perm[i:i + args.batch_size]
            xb, yb = x_train[idx], y_train[idx]
            if adversarial:
                eps = torch.rand(len(idx), generator=gen) * args.adv_epsilon
                xa = fgm_l2(torch, model, xb, yb, eps)
                logits_all = model(torch.cat([xb, xa]))
                logits, logits_adv = logits_all[:len(idx)], logits_all[len(idx):]
                loss = 0.5 * (loss_fn(logits, yb) + loss_fn(logits_adv, yb))
                adv_correct += int((logits_adv.detach().argmax(1) == yb).sum())
            else:
                logits = model(xb)
                loss = loss_fn(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            lv = loss.detach().item()
            loss_sum += lv * len(idx)
            correct += int((logits.detach().argmax(1) == yb).sum())
            bar.set_postfix(loss=f"{lv:.3f}", refresh=False)
        bar.close()
        acc = evaluate(torch, model, x_test[:2000], y_test[:2000])
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        rec = dict(epoch=epoch + 1, train_loss=loss_sum / n_train, train_accuracy=correct / n_train,
                   test_accuracy_first_2000=acc, seconds=round(seconds, 2))
        if adversarial:
            rec["train_fgm_accuracy"] = adv_correct / n_train
        history.append(rec)
        print(f"epoch {epoch + 1:2d}/{args.epochs}: train loss {loss_sum / n_train:.4f}, train acc "
              f"{correct / n_train:.2%}" + (f", on FGM examples {adv_correct / n_train:.2%}" if adversarial else "")
              + f", test acc (first 2000) {acc:.2%}; {seconds:.0f} s (total {train_seconds:.0f} s)", flush=True)
        save_checkpoint(torch, ckpt_path, config, epoch + 1, model, opt, sched, history, train_seconds, cmd)

    if len(history) < args.epochs:
        print(f"paused after epoch {len(history)}/{args.epochs}; checkpoint {ckpt_path}; rerun to resume")
        return 0

    model.eval()
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_atomic(torch, state, out)
    fresh = build(args.model)
    fresh.load_state_dict(torch.load(out, map_location="cpu", weights_only=True), strict=True)
    acc = evaluate(torch, fresh.eval(), x_test, y_test)
    factory, kwargs, _, _ = MODELS[args.model]
    kw = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    meta = dict(
        model=f"fisher_ref.backends.torch_models.{factory}({kw})", name=args.model,
        state_dict=out.name, state_dict_bytes=out.stat().st_size, state_dict_sha256=sha256(out),
        parameters=n_params, data="MNIST",
        input="float32 (batch, 1, 28, 28), pixels uint8 / 255 in [0, 1], no normalisation",
        test_accuracy=acc, test_images=len(x_test), epochs=args.epochs, train_images=n_train,
        batch_size=args.batch_size, optimizer="Adam", lr_schedule=f"peak {args.lr}, warm-up half an epoch, cosine to 0",
        adversarial_training=(f"l2 FGM, eps ~ U[0, {args.adv_epsilon:g}] per example, loss (CE(x) + CE(x_fgm)) / 2, "
                              "gradient of the eval-mode network" if adversarial else None),
        seed=args.seed, threads=args.threads, train_wall_seconds=round(train_seconds, 1),
        command=cmd, torch_version=torch.__version__, numpy_version=np.__version__, history=history)
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {out} ({human_size(out.stat().st_size)}); test accuracy (10,000 MNIST test images, reloaded): "
          f"{acc:.2%}; {train_seconds:.0f} s of training; this run {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
