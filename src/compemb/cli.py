"""The ``compemb`` command line: thin subcommands, each calling one library function."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compemb",
        description="Compositional embeddings with complementary partitions.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Each subcommand registers itself below with set_defaults(func=handler).
    _ = sub
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``compemb`` console script; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"compemb {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
