"""What the reproduction scripts share: arguments, data, the trained models, chunked and cached
computation with progress bars, and writing results (CSV, Markdown, JSON, PNG).

Only the public API of fisher_ref is used for the experiments themselves; this module loads data and
models and writes files.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import io
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MODELS_DIR = HERE / "models"

CIFAR_NOTE = ("CIFAR-10 (JPEG): the shared copy was re-encoded as JPEG (quality ~75) by a public mirror, "
              "not bit-exact CIFAR-10; the model was trained and tested on it")

# ------------------------------------------------------------------------------------ the paper's numbers
PAPER = {
    "table1": {  # seconds per input; the paper's machine is not stated
        "CIFAR-10": {"Eigen-decomposition": "1.49 ± 0.12", "Lanczos": "0.30 ± 0.02", "Alias+Lanczos": "0.15 ± 0.04",
                     "Power iteration": "0.28 ± 0.03", "Alias+Power iteration": "0.25 ± 0.01"},
        "ILSVRC-2012": {"Eigen-decomposition": "intractable", "Lanczos": "58.63 ± 3.50",
                        "Alias+Lanczos": "7.23 ± 0.12", "Power iteration": "47.79 ± 3.15",
                        "Alias+Power iteration": "3.15 ± 0.62"},
    },
    "table2": {  # (mean least l2 perturbation, fooling rate %)
        "mnist": {"fgm": (2.11, 94.98), "ossa": (1.80, 95.68)},
        "cifar": {"fgm": (1.11, 95.21), "ossa": (1.06, 97.85)},
    },
    "fig2_eps90": {"mnist": 2.1, "cifar": 1.4},  # OSSA reaches 90% fooling at this l2 norm (Section 3.4)
    "table3": {  # rows: tested on; columns: crafted from (LeNet, VGG, LeNet-adv, VGG-adv), %
        "LeNet": (100.0, 62.02, 88.49, 82.20),
        "VGG": (53.64, 100.0, 76.93, 74.45),
        "LeNet-adv": (27.92, 17.83, 100.0, 90.04),
        "VGG-adv": (15.06, 29.24, 94.15, 100.0),
    },
    "table4": {  # AUC % for FGM, OTCM, Opt, BIM, OSSA
        "mnist": {"KD": (78.12, 95.46, 95.15, 98.61, 84.24), "BU": (32.37, 91.55, 71.30, 25.46, 74.21),
                  "KD+BU": (82.43, 95.78, 95.35, 98.81, 85.97), "Ours": (96.11, 98.47, 95.67, 99.10, 93.13)},
        "cifar": {"KD": (64.92, 92.13, 91.35, 98.70, 88.89), "BU": (70.40, 91.93, 91.39, 97.32, 87.44),
                  "KD+BU": (76.40, 94.45, 93.77, 98.90, 93.54), "Ours": (80.18, 93.68, 99.45, 99.43, 98.01)},
    },
    "table5": {  # rows: trained on; columns: tested on FGM, OTCM, Opt, BIM, OSSA (AUC %)
        "fgm": (94.31, 91.92, 90.78, 91.87, 92.13), "otcm": (98.55, 98.96, 98.26, 97.78, 98.57),
        "opt": (95.18, 95.30, 96.90, 97.15, 96.11), "bim": (98.10, 96.00, 97.09, 98.57, 96.35),
        "ossa": (91.17, 91.47, 89.77, 89.47, 89.67),
    },
}
ATTACKS = ("fgm", "otcm", "opt", "bim", "ossa")
ATTACK_LABEL = {"fgm": "FGM", "otcm": "OTCM", "opt": "Opt", "bim": "BIM", "ossa": "OSSA",
                "iterative_ossa": "iterative OSSA"}
DATASET_LABEL = {"mnist": "MNIST", "cifar": "CIFAR-10 (JPEG)"}
#: Tables 4 and 5 run BIM twice: all 10 steps (Kurakin et al.) and stopped at each input's first success
#: (as Feinman et al. and Ma et al. run their iterative attacks); bim_stop runs last, so adding it left the
#: other attacks' random draws as they were
DETECTION_ATTACKS = ("fgm", "otcm", "opt", "bim", "ossa", "bim_stop")
DETECTION_LABEL = {**ATTACK_LABEL, "bim": "BIM, all steps", "bim_stop": "BIM, stopped at success"}


def paper_attack(attack: str) -> str:
    """The paper's column for one of DETECTION_ATTACKS (the paper has one BIM, its variant unstated)."""
    return "bim" if attack == "bim_stop" else attack


# ------------------------------------------------------------------------------------------ arguments
class _ScriptParser(argparse.ArgumentParser):
    """A script's parser: refuses a ``--datasets`` / ``--cifar-model`` choice that leaves it nothing to do."""

    def __init__(self, *args, runs_on: Sequence[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.runs_on = tuple(runs_on)

    def parse_args(self, args=None, namespace=None):
        ns = super().parse_args(args, namespace)
        why = nothing_to_do(self.runs_on, ns.datasets, ns.cifar_model)
        if why:
            self.error(why)
        ns.default_datasets = self.get_default("datasets")  # for Run.command: a script may set its own
        return ns


def nothing_to_do(runs_on: Sequence[str], datasets: Sequence[str], cifar_model: str) -> str | None:
    """Why a script that runs on the data sets ``runs_on`` has nothing to do for this choice, or None."""
    only = f"it runs on {' and '.join(runs_on)} only"
    if not set(runs_on) & set(datasets):
        return f"argument --datasets: expected one of {', '.join(runs_on)} ({only}), got {','.join(datasets)}"
    if "cifar" not in runs_on and cifar_model != DEFAULT_MODEL["cifar"]:
        return f"argument --cifar-model: not used ({only}, no CIFAR-10 model to choose), got {cifar_model}"
    return None


def parser(description: str, runs_on: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The arguments every script takes; ``runs_on``: the data sets the script has a part for (default all)."""
    p = _ScriptParser(description=description, runs_on=DATASETS if runs_on is None else runs_on)
    p.add_argument("--quick", action="store_true",
                   help="small subsets and few iterations (a smoke run of a minute or two; not for quoting)")
    p.add_argument("--data-dir", default=None, help="folder with the MNIST IDX files and CIFAR-10 (default: "
                   "../shared/data or $FISHER_REF_DATA)")
    p.add_argument("--out", default=None, help="results folder (default paper_results/results, "
                   "paper_results/results/quick with --quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-cache", action="store_true", help="recompute instead of reusing cached chunks")
    p.add_argument("--cache-dir", default=None, help="cache of computed chunks (default "
                   "~/.cache/fisher_ref/paper_results, or $FISHER_REF_CACHE/paper_results)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    p.add_argument("--cifar-model", choices=CIFAR_MODELS, default=DEFAULT_MODEL["cifar"],
                   help=f"the CIFAR-10 model (default {DEFAULT_MODEL['cifar']}: width 0.5; vgg-cifar-w1: full width; vgg-cifar-w1-ft: its fine-tuned copy); "
                   "another than the default writes into paper_results/results/<model> unless --out is given")
    p.add_argument("--datasets", type=_datasets, default=DATASETS,
                   help="comma-separated data sets to run, of mnist,cifar (default both)")
    return p


def _datasets(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not names or not set(names) <= set(DATASETS):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(DATASETS)}, got {text!r}")
    return tuple(d for d in DATASETS if d in names)


# ------------------------------------------------------------------------------------------------ data
_DATA_CACHE: dict = {}


def load_dataset(name: str, split: str = "test", data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: float32 NCHW pixels in [0, 1] and int64 labels of MNIST or CIFAR-10 (JPEG)."""
    from fisher_ref.datasets import load_cifar10, load_mnist

    key = (name, split, data_dir)
    if key not in _DATA_CACHE:
        if name == "mnist":
            x, y = load_mnist(data_dir, split)
            x = (x.astype(np.float32) / np.float32(255.0))[:, None]
        elif name == "cifar":
            x, y = load_cifar10(data_dir, split)
            x = (x.astype(np.float32) / np.float32(255.0)).transpose(0, 3, 1, 2).copy()
        else:
            raise ValueError(f"dataset must be 'mnist' or 'cifar', got {name!r}")
        _DATA_CACHE[key] = (x, y)
    return _DATA_CACHE[key]


def random_subset(n_total: int, n: int | None, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct indices drawn uniformly from ``range(n_total)`` (sorted); all when n is None."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.sort(rng.choice(n_total, size=n, replace=False))


# ---------------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelSpec:
    name: str          # the paper's name
    dataset: str       # "mnist" or "cifar"
    factory: str       # in fisher_ref.backends.torch_models
    kwargs: dict
    weights: str       # path relative to the repository
    made_by: str       # the command that trained it
    input_shape: tuple
    kd_bandwidth: float = 1.0


MODELS = {
    "lenet": ModelSpec("LeNet", "mnist", "lenet5", dict(dropout=0.5), "fisher_ref/data/mnist_lenet.pt",
                       "python paper_results/train_bundled_model.py", (1, 28, 28), 1.20),
    "vgg-mnist": ModelSpec("VGG", "mnist", "vgg_mnist", dict(width=0.25), "paper_results/models/mnist_vgg.pt",
                           "python paper_results/train_mnist_models.py --model vgg", (1, 28, 28), 1.20),
    "lenet-adv": ModelSpec("LeNet-adv", "mnist", "lenet5", dict(activation="elu", dropout=0.5),
                           "paper_results/models/mnist_lenet_adv.pt",
                           "python paper_results/train_mnist_models.py --model lenet-adv", (1, 28, 28), 1.20),
    "vgg-adv": ModelSpec("VGG-adv", "mnist", "vgg_mnist", dict(width=0.25, activation="elu"),
                         "paper_results/models/mnist_vgg_adv.pt",
                         "python paper_results/train_mnist_models.py --model vgg-adv", (1, 28, 28), 1.20),
    "vgg-cifar": ModelSpec("VGG", "cifar", "vgg_cifar", dict(width=0.5), "paper_results/models/vgg_cifar_w0.5.pt",
                           "python paper_results/train_cifar_vgg.py", (3, 32, 32), 0.26),
    "vgg-cifar-w1": ModelSpec("VGG (full width)", "cifar", "vgg_cifar", dict(width=1), "paper_results/models/vgg_cifar_w1.pt",
                              "python paper_results/train_cifar_vgg.py --width 1 --epochs 60", (3, 32, 32), 0.26),
    "vgg-cifar-w1-ft": ModelSpec("VGG (full width, fine-tuned)", "cifar", "vgg_cifar", dict(width=1),
                                 "paper_results/models/vgg_cifar_w1_ft.pt",
                                 "python paper_results/train_cifar_vgg.py --width 1 --epochs 20 --lr 0.03 "
                                 "--warmup-epochs 0.5 --cutout 16 --init-from paper_results/models/vgg_cifar_w1.pt "
                                 "--out paper_results/models/vgg_cifar_w1_ft.pt", (3, 32, 32), 0.26),
}
#: the model of each data set's experiments (paper Section 3.4: LeNet-5 for MNIST, VGG for CIFAR-10)
DEFAULT_MODEL = {"mnist": "lenet", "cifar": "vgg-cifar"}
CIFAR_MODELS = tuple(k for k, s in MODELS.items() if s.dataset == "cifar")
DATASETS = ("mnist", "cifar")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@functools.lru_cache(maxsize=None)
def load_model(key: str):
    """``(backend, spec, module)``: a float32 :class:`~fisher_ref.backends.TorchBackend` of the trained model
    with every activation layer as a feature layer (the last one feeds the KD detector); loaded once
    per process."""
    import torch

    from fisher_ref.backends import TorchBackend, torch_models

    spec = MODELS[key]
    path = REPO / spec.weights
    if not path.is_file():
        raise FileNotFoundError(f"trained weights of {spec.name} ({key}) not found at {path}; make them with "
                                f"`{spec.made_by}`")
    net = getattr(torch_models, spec.factory)(**spec.kwargs)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    net.eval()
    acts = [n for n, m in net.named_modules() if isinstance(m, (torch.nn.ReLU, torch.nn.ELU))]
    backend = TorchBackend(net, input_shape=spec.input_shape, device="cpu", feature_layers=acts)
    return backend, spec, net


@functools.lru_cache(maxsize=None)
def model_tag(key: str) -> str:
    """Identifies the weights (for cache keys): the model key and the first 16 hex digits of their sha256."""
    return f"{key}:{file_sha256(REPO / MODELS[key].weights)[:16]}"


@dataclass
class DetectionData:
    """What the detection scripts start from: the model, random test inputs it classifies correctly,
    clean training inputs for the KD detector, and FGM's least l2 perturbation of each test input."""
    backend: Any
    spec: ModelSpec
    net: Any
    X: np.ndarray           # the correctly classified test inputs
    Y: np.ndarray
    X_train: np.ndarray
    y_train: np.ndarray
    least_fgm: np.ndarray   # inf where FGM does not fool within [0, 6]
    rng: np.random.Generator  # after drawing the inputs: the script's further draws

    @property
    def fgm_p90(self) -> float:
        """Table 4's budget rule: the 90th percentile of FGM's least perturbation."""
        return float(np.percentile(self.least_fgm[np.isfinite(self.least_fgm)], 90))


def detection_data(run: "Run", ds: str, n: int, n_train: int) -> DetectionData:
    """``n`` random test inputs of ``ds`` (those the model classifies correctly) and ``n_train`` random
    training inputs, drawn from a generator seeded by ``--seed`` in that order."""
    import fisher_ref as fr

    backend, spec, net = load_model(run.model_key(ds))
    rng = np.random.default_rng(run.args.seed)
    x, y = load_dataset(ds, "test", run.args.data_dir)
    xtr, ytr = load_dataset(ds, "train", run.args.data_dir)
    idx = random_subset(len(x), n, rng)
    tr = random_subset(len(xtr), n_train, rng)
    ok = predictions(backend, x[idx]) == y[idx]
    X, Y = x[idx][ok], y[idx][ok]
    lp = fr.least_perturbation(X, backend, "fgm", labels=Y, lo=0.0, hi=6.0, tol=1e-3)
    return DetectionData(backend, spec, net, X, Y, xtr[tr], ytr[tr], lp, rng)


def predictions(backend, x: np.ndarray, batch: int = 500) -> np.ndarray:
    return np.concatenate([backend.probabilities(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])


# ------------------------------------------------------------------------------- chunked, cached compute
class Run:
    """One script's run: output folder, cache, progress, timing and the files it writes."""

    def __init__(self, script: str, args: argparse.Namespace):
        self.script = script
        self.args = args
        self.quick = bool(args.quick)
        self.cifar_model = getattr(args, "cifar_model", DEFAULT_MODEL["cifar"])
        self.datasets = getattr(args, "datasets", DATASETS)
        self.out = Path(args.out) if args.out else self._default_out()
        self.out.mkdir(parents=True, exist_ok=True)
        from fisher_ref.datasets import cache_dir

        root = Path(args.cache_dir) if args.cache_dir else cache_dir() / "paper_results"
        self.cache = None if args.no_cache else root / script
        self.t0 = time.perf_counter()
        self.written: list[Path] = []
        self.meta: dict = {}
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)

    def _default_out(self) -> Path:
        root = RESULTS if self.cifar_model == DEFAULT_MODEL["cifar"] else RESULTS / self.cifar_model
        return root / "quick" if self.quick else root

    def model_key(self, dataset: str) -> str:
        """The key in MODELS of the model this run uses on ``dataset`` (``--cifar-model`` for CIFAR-10)."""
        return self.cifar_model if dataset == "cifar" else DEFAULT_MODEL[dataset]

    def command(self) -> str:
        """The command line that makes this run's results."""
        cmd = "python -m paper_results " + self.script + (" --quick" if self.quick else "")
        if self.cifar_model != DEFAULT_MODEL["cifar"]:
            cmd += f" --cifar-model {self.cifar_model}"
        if self.datasets != getattr(self.args, "default_datasets", DATASETS):
            cmd += f" --datasets {','.join(self.datasets)}"
        return cmd

    # -- progress
    def progress(self, iterable, *, desc: str, total: int | None = None):
        """A bar on a terminal, one line per step in a log (fisher_ref's progress helper)."""
        from fisher_ref._progress import progress

        return progress(iterable, desc=f"{self.script}: {desc}", total=total, enabled=not self.args.no_progress)

    # -- cached chunks: an interrupted run resumes at the first chunk not on disk
    def chunked(self, fn: Callable[[np.ndarray], dict], idx: np.ndarray, *, chunk: int, desc: str,
                key: Any) -> dict:
        """``fn(idx_chunk) -> {name: array}`` over chunks of ``idx``, concatenated along axis 0.

        Each chunk's result is cached under a hash of (``key``, the chunk's indices); ``--no-cache``
        recomputes. Returns ``{name: array}`` over all of ``idx``.
        """
        idx = np.asarray(idx)
        parts: list[dict] = []
        starts = range(0, len(idx), chunk)
        for s in self.progress(starts, desc=desc, total=len(starts)):
            sub = idx[s:s + chunk]
            path = None
            if self.cache is not None:
                h = hashlib.sha256(json.dumps([repr(key), sub.tolist()], default=str).encode()).hexdigest()[:24]
                path = self.cache / f"{h}.npz"
                if path.is_file():
                    try:
                        with np.load(path, allow_pickle=False) as f:
                            parts.append({k: f[k] for k in f.files})
                        continue
                    except (OSError, ValueError, EOFError):  # a torn file from an interrupted write
                        path.unlink(missing_ok=True)
            res = {k: np.asarray(v) for k, v in fn(sub).items()}
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                with open(tmp, "wb") as f:
                    np.savez(f, **res)
                os.replace(tmp, path)
            parts.append(res)
        if not parts:
            return {}
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    # -- output
    def path(self, name: str) -> Path:
        p = self.out / name
        self.written.append(p)
        return p

    def write_table(self, name: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
        """``<name>.csv`` (plain values)."""
        p = self.path(f"{name}.csv")
        with open(p, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
        return p

    def write_markdown(self, name: str, text: str) -> Path:
        p = self.path(f"{name}.md")
        p.write_text(text.rstrip() + "\n\n" + self.footer() + "\n")
        return p

    def save_figure(self, fig, name: str) -> Path:
        p = self.path(f"{name}.png")
        fig.savefig(p, dpi=120, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(fig)
        return p

    def footer(self) -> str:
        import torch

        return (f"_Made by `{self.command()}` (seed {self.args.seed}) in {time.perf_counter() - self.t0:.0f} s on "
                f"{machine()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
                f"{time.strftime('%Y-%m-%d')}._" + (" **Quick run: small subsets, not for quoting.**"
                                                     if self.quick else ""))

    def finish(self, summary: dict) -> dict:
        summary = dict(summary)
        summary.update(script=self.script, command=self.command(), quick=self.quick, seed=self.args.seed,
                       seconds=round(time.perf_counter() - self.t0, 1), machine=machine(),
                       date=time.strftime("%Y-%m-%d"))
        p = self.path(f"{self.script}.json")
        p.write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
        print(f"{self.script}: wrote {', '.join(sorted({q.name for q in self.written}))} in {self.out} "
              f"({summary['seconds']:.0f} s)", flush=True)
        return summary


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def machine() -> str:
    cores = os.cpu_count()
    return f"{platform.machine()} CPU, {cores} cores, Python {platform.python_version()}"


# -------------------------------------------------------------------------------------------- formatting
def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    out = io.StringIO()
    out.write("| " + " | ".join(map(str, header)) + " |\n")
    out.write("|" + (align or "---|" + "---:|" * (len(header) - 1)) + "\n")
    for r in rows:
        out.write("| " + " | ".join(map(str, r)) + " |\n")
    return out.getvalue()


def pct(v: float, digits: int = 2) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{100 * v:.{digits}f}"


def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


@dataclass
class Sizes:
    """Subset sizes of a script, full and quick."""
    full: dict = field(default_factory=dict)
    quick: dict = field(default_factory=dict)

    def get(self, run: Run, name: str):
        return (self.quick if run.quick else self.full)[name]
