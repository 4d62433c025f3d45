"""The ``infobatch`` command. ``infobatch demo`` shows what InfoBatch saves on real data."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``infobatch`` argument parser with its subcommands."""
    from .demo import add_demo_arguments

    parser = argparse.ArgumentParser(
        prog="infobatch",
        description="InfoBatch: unbiased dynamic data pruning for PyTorch (same accuracy, "
        "fewer sample passes).",
    )
    parser.add_argument("--version", action="version", version=f"infobatch {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="train on MNIST-1D with full data and with InfoBatch, print and plot the savings",
        description=(
            "Train the same small CNN twice per seed, with full data and with InfoBatch (same "
            "seed, model and OneCycle learning-rate schedule), then print a side-by-side table "
            "(test accuracy, sample passes, training time, savings) and write demo.png and "
            "demo.json to --output. Offline: MNIST-1D is generated locally (about 30 s once, "
            "then cached). The default run takes 1-3 minutes on 2 CPU cores. "
            'Needs pip install "infobatch[demo]".'
        ),
    )
    add_demo_arguments(demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``infobatch`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "demo":
        from .demo import options_from_args, run_demo

        try:
            run_demo(options_from_args(args))
        except (ImportError, ValueError, FileNotFoundError) as error:
            print(f"infobatch demo: error: {error}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("infobatch demo: interrupted", file=sys.stderr)
            return 130
        return 0
    parser.error(f"unknown command {args.command!r}")  # unreachable: argparse checks choices
    return 2


if __name__ == "__main__":
    sys.exit(main())
