#!/usr/bin/env python
"""Train the paper's shallow VGG on CIFAR-10 (JPEG): ``fisher_ref.backends.torch_models.vgg_cifar``.

Run from the repository root (needs torch and tqdm, and the CIFAR-10 (JPEG) tarball of the shared
data, or the original CIFAR-10 through ``--data-dir``):

    python paper_results/train_cifar_vgg.py --epochs 22

The network is exactly ``vgg_cifar(width=..., activation=...)`` (VGG-16 without conv4-1 .. conv5-3,
batch norm, dropout 0.5 before both fully connected layers). Its input is pixels in [0, 1]
(uint8 / 255, NCHW), with no mean/std normalisation anywhere, so the attacks can work in pixel space.

Training: SGD (Nesterov momentum 0.9, weight decay on the conv/linear weights only), a linear warm-up
then cosine decay of the learning rate to 0 (per step), cross-entropy, random crop (zero padding 4)
and horizontal flip. Everything is seeded (``--seed``): the global torch RNG (dropout) and NumPy by
``--seed``; the data order and augmentation of epoch ``e`` by a generator seeded from (seed, e).

Resumable: after every epoch the model, optimiser, scheduler, epoch, history and RNG states are
written (atomically) to ``<checkpoint-dir>/<out stem>.ckpt.pt`` (default
``paper_results/models/checkpoints/``); rerunning the same command resumes after the last finished
epoch (a checkpoint written with other settings is refused; ``--restart`` ignores it).
``--pause-after N`` stops after N epochs of this run (rerun to go on).

Writes, at the end:

* ``--out`` (default ``paper_results/models/vgg_cifar_w{width}.pt``, ``..._elu.pt`` for ELU): the
  float32 state dict, loadable with ``vgg_cifar(width=..., activation=...).load_state_dict(
  torch.load(path, weights_only=True))``;
* the same path with ``.json``: test accuracy on the full CIFAR-10 (JPEG) test set (10,000 images;
  measured on the state dict reloaded into a fresh ``vgg_cifar``), epochs, per-epoch history,
  training wall time, command, torch version, hyper-parameters, data description.

CIFAR-10 (JPEG): the shared copy was re-encoded as JPEG (quality ~75) by a public mirror; it is not
bit-exact CIFAR-10 (mean absolute pixel error 4.5-8.1 /255 per image). Train and test on it
consistently and report results as "CIFAR-10 (JPEG)".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout
    sys.path.insert(0, str(REPO))

from fisher_ref.datasets import CIFAR10_JPEG_SOURCE, load_cifar10  # noqa: E402

PAD = 4
EVAL_BATCH = 500
# settings that change the training; a checkpoint is only resumed when all of them match
_CONFIG_KEYS = ("width", "activation", "epochs", "batch_size", "lr", "momentum", "weight_decay", "warmup_epochs",
                "train_limit", "seed", "data_dir", "cutout", "init_from")


def default_out(width: float, activation: str) -> Path:
    suffix = "" if activation == "relu" else f"_{activation}"
    return REPO / "paper_results" / "models" / f"vgg_cifar_w{width:g}{suffix}.pt"


def add_run_arguments(p: argparse.ArgumentParser, default_out: str) -> None:
    """The options every training script shares: seed, threads, output, checkpoints, progress."""
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help=f"state dict path (default {default_out})")
    p.add_argument("--checkpoint-dir", default=None, help="default: <folder of --out>/checkpoints")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start again")
    p.add_argument("--pause-after", type=int, default=None, metavar="N",
                   help="stop after N epochs of this run; rerun the same command to resume")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None, help="folder with CIFAR-10 (default: the shared data)")
    p.add_argument("--width", type=float, default=0.5, help="channel width multiplier of vgg_cifar")
    p.add_argument("--activation", choices=("relu", "elu"), default="relu")
    p.add_argument("--epochs", type=int, default=22)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (SGD)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--train-limit", type=int, default=None,
                   help="train on the first N training images only (class-balanced prefix); default all 50,000")
    p.add_argument("--cutout", type=int, default=0, metavar="SIZE",
                   help="also blank one random SIZE x SIZE square per training image (DeVries and Taylor 2017; "
                        "0: off)")
    p.add_argument("--init-from", default=None, metavar="STATE_DICT",
                   help="start from these vgg_cifar weights (a state dict this script wrote) instead of "
                        "random ones: a further cosine cycle of --epochs epochs")
    p.add_argument("--eval-limit", type=int, default=2000,
                   help="test images used for the accuracy printed after each epoch (the final one uses all)")
    add_run_arguments(p, "paper_results/models/vgg_cifar_w{width}.pt")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.width <= 0:
        p.error("--epochs, --batch-size and --width must be positive")
    if not 0 <= args.cutout <= 32:
        p.error(f"--cutout: expected a square side from 0 (off) to 32 pixels, got {args.cutout}")
    if args.init_from is not None:
        if not Path(args.init_from).is_file():
            p.error(f"--init-from: no state dict at {args.init_from}")
        out = Path(args.out) if args.out else default_out(args.width, args.activation)
        if out.resolve() == Path(args.init_from).resolve():
            p.error(f"--out: the fine-tuned weights would overwrite --init-from {args.init_from}; pass another --out")
    return args


def command_line(args) -> str:
    """The command that reproduces the model (run-control options such as --pause-after left out)."""
    cmd = "python paper_results/train_cifar_vgg.py"
    defaults = vars(parse_args([]))
    skip = {"restart", "pause_after", "no_progress", "checkpoint_dir"}
    for k, v in vars(args).items():
        if k in skip or v == defaults[k]:
            continue
        if k == "out" and Path(v).resolve() == default_out(args.width, args.activation).resolve():
            continue
        cmd += f" --{k.replace('_', '-')}" + ("" if isinstance(v, bool) else f" {v}")
    return cmd


def init_from_record(path: str | None) -> dict | None:
    """What a fine-tuned model started from: the state dict's name, hash and (when its JSON is
    beside it) its epochs, accuracy and command."""
    if path is None:
        return None
    src = Path(path)
    rec = dict(state_dict=src.name, state_dict_sha256=sha256(src))
    meta = src.with_suffix(".json")
    if meta.is_file():
        m = json.loads(meta.read_text())
        rec.update({k: m[k] for k in ("epochs", "test_accuracy", "command") if k in m})
    return rec


def human_size(n: int) -> str:
    return f"{n / 1024:.0f} KiB" if n < 1024 ** 2 else f"{n / 1024 ** 2:.2f} MiB"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -------------------------------------------------------------------------------------------- data
def to_nchw_uint8(torch, images: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def augmented_batch(torch, padded, idx, gen, cutout: int = 0):
    """Random 32 x 32 crops of the zero-padded uint8 images ``padded[idx]`` and random horizontal flips,
    as float32 in [0, 1], channels-last; with ``cutout`` > 0, one ``cutout`` x ``cutout`` square per
    image (centre uniform over the image, clipped at its edges) set to 0."""
    n = len(idx)
    oy = torch.randint(0, 2 * PAD + 1, (n,), generator=gen)
    ox = torch.randint(0, 2 * PAD + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    ar = torch.arange(32)
    rows = oy[:, None] + ar
    cols = ox[:, None] + ar
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    xb = padded[idx[:, None, None, None], torch.arange(3)[None, :, None, None], rows[:, None, :, None],
                cols[:, None, None, :]]
    xb = xb.float() / 255.0
    if cutout:
        cy = torch.randint(0, 32, (n,), generator=gen)
        cx = torch.randint(0, 32, (n,), generator=gen)
        lo = cutout // 2
        inside_y = (ar[None, :] >= (cy - lo)[:, None]) & (ar[None, :] < (cy - lo + cutout)[:, None])
        inside_x = (ar[None, :] >= (cx - lo)[:, None]) & (ar[None, :] < (cx - lo + cutout)[:, None])
        xb = xb.masked_fill((inside_y[:, :, None] & inside_x[:, None, :])[:, None], 0.0)
    return xb.contiguous(memory_format=torch.channels_last)


def evaluate(torch, model, x_u8, y) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x_u8), EVAL_BATCH):
            xb = (x_u8[i:i + EVAL_BATCH].float() / 255.0).contiguous(memory_format=torch.channels_last)
            correct += int((model(xb).argmax(1) == y[i:i + EVAL_BATCH]).sum())
    return correct / len(x_u8)


# ------------------------------------------------------------------------------------------ checkpoint
def save_atomic(torch, obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


class CheckpointMismatch(Exception):
    """A checkpoint written with other settings than the run's."""


def load_checkpoint(torch, path: Path, config: dict, model, opt, sched, *, restart: bool = False):
    """Restore model, optimiser, scheduler and RNG states from ``path`` when it exists (and not
    ``restart``); returns ``(epochs done, history, training seconds)``. Raises CheckpointMismatch
    (with the differing settings) when ``path`` was written with another ``config``."""
    if restart or not path.is_file():
        return 0, [], 0.0
    ck = torch.load(path, map_location="cpu", weights_only=False)
    if ck["config"] != config:
        diff = {k: (ck["config"].get(k), v) for k, v in config.items() if ck["config"].get(k) != v}
        raise CheckpointMismatch(f"{path} was written with other settings (checkpoint, now): {diff}; rerun with "
                                 "--restart to start again, or pass another --out / --checkpoint-dir")
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    torch.set_rng_state(ck["torch_rng"])
    np.random.set_state(ck["numpy_rng"])
    return ck["epoch"], ck["history"], ck["train_seconds"]


def cosine_schedule(torch, opt, steps_per_epoch: int, epochs: int, warmup_steps: int):
    """Linear warm-up over ``warmup_steps`` then cosine decay to 0, stepped per batch."""
    total = epochs * steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup_steps, total))


def resume(torch, path: Path, config: dict, model, opt, sched, args):
    """:func:`load_checkpoint` for a script: ``None`` (after saying why) on a mismatching checkpoint."""
    try:
        state = load_checkpoint(torch, path, config, model, opt, sched, restart=args.restart)
    except CheckpointMismatch as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return None
    if state[0]:
        print(f"resuming from {path} after epoch {state[0]}/{args.epochs} ({state[2]:.0f} s of training so far)")
    return state


def save_checkpoint(torch, path: Path, config: dict, epoch: int, model, opt, sched, history, train_seconds,
                    command: str) -> None:
    save_atomic(torch, dict(config=config, epoch=epoch, model=model.state_dict(), optimizer=opt.state_dict(),
                            scheduler=sched.state_dict(), torch_rng=torch.get_rng_state(),
                            numpy_rng=np.random.get_state(), history=history, train_seconds=train_seconds,
                            command=command), path)


# -------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from tqdm.auto import tqdm

    from fisher_ref.backends.torch_models import vgg_cifar

    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    out = Path(args.out) if args.out else default_out(args.width, args.activation)
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else out.parent / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = ckpt_dir / f"{out.stem}.ckpt.pt"
    cmd = command_line(args)
    config = {k: getattr(args, k) for k in _CONFIG_KEYS}

    # data: uint8 NCHW; training images zero-padded once for the random crops
    x_train_np, y_train_np, source = load_cifar10(args.data_dir, "train", limit=args.train_limit, return_source=True)
    x_test_np, y_test_np = load_cifar10(args.data_dir, "test")
    data_name = CIFAR10_JPEG_SOURCE if source.startswith(CIFAR10_JPEG_SOURCE) else source
    x_train = to_nchw_uint8(torch, x_train_np)
    y_train = torch.from_numpy(y_train_np)
    padded = torch.nn.functional.pad(x_train, (PAD, PAD, PAD, PAD))
    x_test, y_test = to_nchw_uint8(torch, x_test_np), torch.from_numpy(y_test_np)
    n_train = len(x_train)
    x_mon, y_mon = x_test[:args.eval_limit], y_test[:args.eval_limit]  # class-balanced prefix
    del x_train_np, x_train

    # model, optimiser, schedule
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    model = vgg_cifar(width=args.width, activation=args.activation, seed=args.seed)
    if args.init_from:
        model.load_state_dict(torch.load(args.init_from, map_location="cpu", weights_only=True), strict=True)
    model = model.to(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": args.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=args.lr, momentum=args.momentum, nesterov=args.momentum > 0)
    steps_per_epoch = math.ceil(n_train / args.batch_size)
    sched = cosine_schedule(torch, opt, steps_per_epoch, args.epochs, max(1, round(args.warmup_epochs * steps_per_epoch)))
    loss_fn = torch.nn.CrossEntropyLoss()
    state = resume(torch, ckpt_path, config, model, opt, sched, args)
    if state is None:
        return 2
    start_epoch, history, train_seconds = state

    print(f"{data_name}: {n_train} training images{' (--train-limit)' if args.train_limit else ''}, "
          f"{len(x_test)} test images; vgg_cifar(width={args.width:g}, activation={args.activation!r}) "
          f"{n_params:,} parameters; torch {torch.__version__}, {torch.get_num_threads()} threads, seed {args.seed}")

    stop = args.epochs if args.pause_after is None else min(args.epochs, start_epoch + args.pause_after)
    for epoch in range(start_epoch, stop):
        t0 = time.perf_counter()
        model.train()
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + epoch)
        perm = torch.randperm(n_train, generator=gen)
        bar = tqdm(range(0, n_train, args.batch_size), desc=f"epoch {epoch + 1}/{args.epochs}",
                   disable=args.no_progress, leave=False, mininterval=1.0)
        loss_sum, correct = 0.0, 0
        for i in bar:
            idx = perm[i:i + args.batch_size]
            xb, yb = augmented_batch(torch, padded, idx, gen, args.cutout), y_train[idx]
            opt.zero_grad(set_to_none=True)
            logits = model(xb)
            loss = loss_fn(logits, yb)
            loss.backward()
            opt.step()
            sched.step()
            lv = loss.detach().item()
            loss_sum += lv * len(idx)
            correct += int((logits.detach().argmax(1) == yb).sum())
            bar.set_postfix(loss=f"{lv:.3f}", lr=f"{sched.get_last_lr()[0]:.4f}", refresh=False)
        bar.close()
        t_train = time.perf_counter() - t0
        acc_mon = evaluate(torch, model, x_mon, y_mon)
        epoch_seconds = time.perf_counter() - t0
        train_seconds += epoch_seconds
        history.append(dict(epoch=epoch + 1, train_loss=loss_sum / n_train, train_accuracy=correct / n_train,
                            test_accuracy_first_n=acc_mon, n_test_monitor=len(x_mon),
                            seconds=round(epoch_seconds, 2), train_step_seconds=round(t_train, 2)))
        print(f"epoch {epoch + 1:2d}/{args.epochs}: train loss {loss_sum / n_train:.4f}, train acc "
              f"{correct / n_train:.2%} (augmented), test acc (first {len(x_mon)}) {acc_mon:.2%}; "
              f"{epoch_seconds:.0f} s (total {train_seconds:.0f} s)", flush=True)
        save_checkpoint(torch, ckpt_path, config, epoch + 1, model, opt, sched, history, train_seconds, cmd)

    done = len(history)
    if done < args.epochs:
        print(f"paused after epoch {done}/{args.epochs}; checkpoint {ckpt_path}; rerun the same command to resume")
        return 0

    # final state dict: contiguous float32 tensors, loadable into a fresh vgg_cifar
    model.eval()
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_atomic(torch, state, out)
    acc_trained = evaluate(torch, model, x_test, y_test)

    # check: reload into exactly vgg_cifar(width=..., activation=...) (default memory format) and evaluate
    fresh = vgg_cifar(width=args.width, activation=args.activation)
    fresh.load_state_dict(torch.load(out, map_location="cpu", weights_only=True), strict=True)
    fresh.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x_test), EVAL_BATCH):
            correct += int((fresh(x_test[i:i + EVAL_BATCH].float() / 255.0).argmax(1)
                            == y_test[i:i + EVAL_BATCH]).sum())
    acc = correct / len(x_test)

    meta = dict(
        model=f"fisher_ref.backends.torch_models.vgg_cifar(width={args.width:g}, activation={args.activation!r}, "
              "batch_norm=True, dropout=0.5)",
        state_dict=out.name, state_dict_bytes=out.stat().st_size, state_dict_sha256=sha256(out),
        parameters=n_params,
        data=data_name, data_note=source,
        input="float32 (batch, 3, 32, 32), pixels uint8 / 255 in [0, 1], RGB, no mean/std normalisation",
        test_accuracy=acc, test_images=len(x_test),
        test_accuracy_before_reload=acc_trained,
        epochs=args.epochs, train_images=n_train, batch_size=args.batch_size,
        optimizer=f"SGD, Nesterov momentum {args.momentum}, weight decay {args.weight_decay} on conv/linear weights",
        lr_schedule=f"peak {args.lr}, linear warm-up {args.warmup_epochs:g} epoch(s), cosine decay to 0 per step",
        augmentation=f"random crop 32x32 from zero padding {PAD}, random horizontal flip"
                     + (f", cutout {args.cutout}x{args.cutout}" if args.cutout else ""),
        init_from=init_from_record(args.init_from),
        loss="cross-entropy", seed=args.seed, threads=args.threads,
        train_wall_seconds=round(train_seconds, 1),
        seconds_per_epoch=round(train_seconds / args.epochs, 1),
        command=cmd, torch_version=torch.__version__, numpy_version=np.__version__,
        history=history,
    )
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {out} ({human_size(out.stat().st_size)}) and {out.with_suffix('.json').name}")
    print(f"test accuracy on the full {data_name} test set ({len(x_test)} images), state dict reloaded into "
          f"vgg_cifar(width={args.width:g}): {acc:.2%} (before reload: {acc_trained:.2%}); "
          f"{args.epochs} epochs, {train_seconds:.0f} s of training ({train_seconds / args.epochs:.0f} s/epoch); "
          f"this run {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
