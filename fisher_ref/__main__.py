"""Command line: ``fisher-ref [demo]``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fisher-ref", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="spectrum and OSSA on the bundled MNIST model (the default)")
    demo.add_argument("--n", type=int, default=200, help="number of bundled test images (default 200)")
    demo.add_argument("--epsilons", type=float, nargs="+", default=[0.5, 1.0, 2.0, 3.0])
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command in (None, "demo"):
        from ._demo import run_demo

        n = getattr(args, "n", 200)
        if n < 1:
            parser.error("--n must be a positive int")
        run_demo(n=n, epsilons=tuple(getattr(args, "epsilons", (0.5, 1.0, 2.0, 3.0))),
                 seed=getattr(args, "seed", 0))
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
