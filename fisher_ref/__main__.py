"""Command line: ``fisher-ref [audit ...]`` and ``fisher-ref demo``.

``fisher-ref paper ...`` runs the paper reproduction (``python -m paper_results ...``) from any
folder of a checkout. ``fisher-ref`` with no arguments runs ``fisher-ref audit`` on the bundled example (the MNIST
LeNet-5 in ``fisher_ref/data/mnist_lenet.onnx`` and the 500 bundled MNIST test images) and writes
into a fresh ``./fisher-ref-audit/run-YYYYmmdd-HHMMSS/``.
"""

from __future__ import annotations

import argparse
import re
import sys

_AUDIT_EPILOG = """\
examples:
  fisher-ref                                    # the bundled MNIST LeNet-5 and 500 MNIST test images
  fisher-ref audit model.onnx --data x.npz --out audit/
  fisher-ref audit model.onnx --data cifar-10-batches-py --mean 0.49 0.48 0.45 --std 0.25 0.24 0.26 --out a/
  fisher-ref audit model.onnx --data images/ --resize 32 32 --limit 1000 --scheduler local:2 --out a/
  fisher-ref audit model.onnx --data x.npz --out audit/ --resume     # continue an interrupted audit

Without --out the audit writes into a fresh ./fisher-ref-audit/run-YYYYmmdd-HHMMSS/. An existing,
non-empty --out is refused unless --resume (continue: only shards the manifest proves are kept),
--force (remove what the previous audit's manifest.json lists) or --force-any (a folder with no
manifest: overwrite the audit's file names there) is given; nothing else in the folder is touched.
One audit at a time writes into a folder (a lock file; --break-lock removes one left by a killed run).
Exit status: 0 done (or stopped by --max-shards), 2 bad input, 130 interrupted (resume with --resume).
"""


def _audit_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "audit", help="Fisher-information vulnerability audit of an ONNX classifier (the default)",
        description="Per input: top-k Fisher eigenvalues, OSSA and FGM success at each epsilon, the least l2\n"
                    "perturbation of OSSA, prediction and confidence. Writes results.csv, summary.json, PNG plots\n"
                    "and a self-contained report.html.",
        epilog=_AUDIT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=None, metavar="MODEL.onnx",
                   help="the ONNX classifier (default: the bundled MNIST LeNet-5)")
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="PATH", help=".npy, .npz (x/y or images/labels), an IDX file or MNIST IDX "
                   "folder, an ImageFolder (root/<class>/<image>), CIFAR-10 pickle batches (folder, batch file or "
                   "cifar-10-python.tar.gz); default with no MODEL: the 500 bundled MNIST test images")
    g.add_argument("--labels", metavar="PATH", help="labels for data that has none (.npy, .npz, IDX, or text with one "
                   "integer per line); without labels the model's predictions are attacked")
    g.add_argument("--format", dest="data_format", default="auto",
                   choices=["auto", "npy", "npz", "idx", "imagefolder", "cifar"], help="data format (default: detect)")
    g.add_argument("--split", default="test", choices=["test", "train"], help="MNIST / CIFAR-10 split (default test)")
    g.add_argument("--limit", type=int, metavar="N", help="audit only the first N inputs (default: all)")
    g = p.add_argument_group("preprocessing (perturbations are measured after scaling, before mean/std)")
    g.add_argument("--scale", default="auto", choices=["auto", "255", "none"],
                   help="divide by 255 to get [0, 1] pixels (auto: uint8 data only)")
    g.add_argument("--mean", type=float, nargs="+", metavar="M", help="per-channel mean the model expects")
    g.add_argument("--std", type=float, nargs="+", metavar="S", help="per-channel std the model expects")
    g.add_argument("--layout", default="auto", choices=["auto", "nchw", "nhwc"],
                   help="layout of the data; converted to the model's (auto: by matching shapes)")
    g.add_argument("--resize", type=int, nargs=2, metavar=("H", "W"), help="resize images (bilinear; off by default)")
    g.add_argument("--bounds", type=float, nargs=2, metavar=("LO", "HI"),
                   help="the data's range: adversarial inputs are clipped to [LO, HI] (default [0, 1]; data "
                        "outside it is refused unless --scale 255, --bounds or --no-clip says what it is)")
    g.add_argument("--no-clip", action="store_true", help="no bounds: audit data of any range, unclipped")
    g = p.add_argument_group("analysis")
    g.add_argument("--k", type=int, default=10, help="top Fisher eigenvalues per input (default 10)")
    g.add_argument("--epsilons", type=float, nargs="+", default=[0.5, 1.0, 2.0, 3.0], metavar="E",
                   help="l2 budgets of OSSA and FGM (default 0.5 1 2 3)")
    g.add_argument("--max-epsilon", type=float, default=6.0,
                   help="upper end of the least-perturbation search (default 6, as the paper)")
    g.add_argument("--tol", type=float, default=1e-3, help="least-perturbation tolerance (default 1e-3)")
    g.add_argument("--n-vulnerable", type=int, default=8, help="most vulnerable inputs to show (default 8)")
    g = p.add_argument_group("model")
    g.add_argument("--providers", nargs="+", metavar="P",
                   help="ONNX Runtime execution providers in order (default: CUDA when available, else CPU)")
    g.add_argument("--batch-size", type=int, default=64, help="inputs per ONNX Runtime run (default 64)")
    g.add_argument("--max-memory", metavar="SIZE", help="memory one worker's derivative runs may hold, e.g. 2G "
                   "(lowers --batch-size to fit; default: a quarter of the memory available, shared by the workers)")
    g.add_argument("--input-name", help="the graph input to differentiate (models with several inputs)")
    g.add_argument("--output-name", help="the graph output holding the class scores (models with several outputs)")
    g = p.add_argument_group("output and execution")
    g.add_argument("--out", metavar="DIR", help="output folder (default: ./fisher-ref-audit/run-YYYYmmdd-HHMMSS)")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--resume", action="store_true", help="continue an interrupted audit in --out")
    x.add_argument("--force", action="store_true", help="start over: remove the files the audit in --out lists "
                   "in its manifest.json (nothing else)")
    x.add_argument("--force-any", action="store_true", help="like --force for a folder with no audit manifest: "
                   "overwrite the audit's file names there (other files are kept)")
    g.add_argument("--break-lock", action="store_true", help="remove the lock of a killed audit (a process no "
                   "longer running) on --out")
    g.add_argument("--shard-size", type=int, default=50, help="inputs per shard (default 50)")
    g.add_argument("--max-shards", type=int, metavar="N", help="compute at most N shards, then stop (resume later)")
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help="run shards on a Dask cluster: a scheduler address (tcp://host:8786) or local:N for N local "
                        "worker processes; the model path must be readable by the workers")
    g.add_argument("--worker-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="with --scheduler: stop (finished shards kept) when no worker has been alive this long "
                        "(default 60)")
    g.add_argument("--no-report", action="store_true", help="write results.csv and summary.json only")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


#: Options whose command-line flag is not ``--`` + the keyword with dashes.
_FLAG = {"data_format": "--format"}


def _flag(option: str) -> str:
    return _FLAG.get(option, "--" + option.replace("_", "-"))


def _error_line(exc) -> str:
    """One line for an AuditError; an option's own message names its --flag."""
    from .audit import ConfigError

    msg = " ".join(str(exc).split())
    if isinstance(exc, ConfigError) and exc.option and msg.startswith(f"{exc.option} "):
        msg = _flag(exc.option) + msg[len(exc.option):]
    return f"fisher-ref audit: error: {_without_keywords(msg)}"


def _without_keywords(msg: str) -> str:
    """The message without the library keywords it gives in brackets beside a flag ("pass --force to
    overwrite (force=True)" -> "pass --force to overwrite"): the CLI speaks in flags, the library in keywords."""
    msg = re.sub(r" \(\w+=(?:True|False)?\)", "", msg)
    return re.sub(_KEYWORD_ARGUMENTS, lambda m: "--" + m.group(0).replace("_", "-"), msg)


# the audit's keyword arguments whose name differs from a plain word: in a message they become the flag
_KEYWORD_ARGUMENTS = (r"(?<![\w.\-'\"])(?:input_name|output_name|batch_size|max_memory|data_format|max_epsilon|shard_size|"
                      r"n_vulnerable|force_any|break_lock|worker_timeout|max_shards)(?![\w=(])")


def _audit_options(args) -> dict:
    return dict(out=args.out, k=args.k, epsilons=args.epsilons, limit=args.limit, providers=args.providers,
                batch_size=args.batch_size, max_memory=args.max_memory, input_name=args.input_name, output_name=args.output_name,
                data_format=args.data_format, split=args.split, layout=args.layout, scale=args.scale, mean=args.mean,
                std=args.std, resize=args.resize,
                bounds=None if args.no_clip else ("auto" if args.bounds is None else tuple(args.bounds)),
                max_epsilon=args.max_epsilon, tol=args.tol, shard_size=args.shard_size,
                n_vulnerable=args.n_vulnerable, resume=args.resume, force=args.force, force_any=args.force_any,
                break_lock=args.break_lock, scheduler=args.scheduler, worker_timeout=args.worker_timeout,
                max_shards=args.max_shards, progress=not args.no_progress, report=not args.no_report)


def _run_audit(args) -> int:
    from . import audit as audit_pkg

    def log(line: str) -> None:
        print(line, flush=True)

    try:
        res = audit_pkg.audit(args.model, args.data, labels=args.labels, log=log, **_audit_options(args))
    except audit_pkg.AuditError as exc:
        if args.debug:
            raise
        print(_error_line(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        where = args.out or "the output folder"
        print(f"fisher-ref audit: interrupted; finished shards are in {where}/shards: run the same command with "
              f"--resume{'' if args.out else ' --out DIR'} to continue", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input: say so in one line
        if args.debug:
            raise
        print(f"fisher-ref audit: internal error: {type(exc).__name__}: {' '.join(str(exc).split())} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return 1
    return _print_result(res)


def _print_result(res) -> int:
    from ._text import count
    from .audit._summary import fooling_rate_population

    if not res.complete:
        return 0
    s = res.summary
    fr = s["fooling_rate"]

    def pct(v):
        return "n/a" if v is None else f"{100 * v:5.1f}%"

    acc = "" if s["accuracy"] is None else f", accuracy {100 * s['accuracy']:.1f}%"
    print(f"\naudited {count(s['n_inputs'], 'input')} in {res.seconds:.1f} s{acc} "
          f"({count(len(res.shards_computed), 'shard')} computed, {len(res.shards_skipped)} resumed)")
    print(f"fooling rate over {fooling_rate_population(fr)}:")
    print("  epsilon " + "".join(f"{e:>8g}" for e in fr["epsilons"]))
    print("  OSSA    " + "".join(f"{pct(v):>8}" for v in fr["ossa"]))
    print("  FGM     " + "".join(f"{pct(v):>8}" for v in fr["fgm"]))
    lp = s["least_perturbation"]["stats"]
    if lp:
        print(f"least l2 perturbation (OSSA): median {lp['median']:.3f}; fooled within "
              f"{s['config']['max_epsilon']:g}: {pct(s['least_perturbation']['fooled_within_max_epsilon']).strip()}")
    rho = s["spearman"]["rho"]
    if rho is not None:
        print(f"Spearman rho(log lambda_1, least perturbation) = {rho:.3f} over {count(s['spearman']['n'], 'input')}")
    print(f"wrote {res.out}/: " + ", ".join(sorted(res.files)))
    if "report.html" in res.files:
        print(f"open {res.files['report.html'].resolve()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fisher-ref`` command; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="fisher-ref", description="Fisher information of a classifier's input (Zhao et al., AAAI 2019). "
        "With no arguments: `fisher-ref audit` on the bundled MNIST model and data.")
    sub = parser.add_subparsers(dest="command", metavar="{audit,demo,validate,paper}")
    _audit_parser(sub)
    sub.add_parser("validate", add_help=False,
                   help="run the validation suite (fisher-ref validate --help) and print what agreed to what tolerance")
    sub.add_parser("paper", add_help=False,
                   help="reproduce the paper's tables and figures (fisher-ref paper list; needs a checkout)")
    demo = sub.add_parser("demo", help="spectrum and OSSA on the bundled MNIST MLP, checked against a dense FIM")
    demo.add_argument("--n", type=int, default=200, help="number of bundled test images (default 200)")
    demo.add_argument("--epsilons", type=float, nargs="+", default=[0.5, 1.0, 2.0, 3.0])
    demo.add_argument("--seed", type=int, default=0)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["validate"]:
        from .validation.run_all import main as validate

        return validate(argv[1:])
    if argv[:1] == ["paper"]:
        from ._paper import main as paper

        return paper(argv[1:])
    args = parser.parse_args(argv or ["audit"])
    if args.command == "demo":
        from ._demo import run_demo

        if args.n < 1:
            parser.error("--n must be a positive int")
        run_demo(n=args.n, epsilons=tuple(args.epsilons), seed=args.seed)
        return 0
    if args.command == "audit":
        return _run_audit(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
