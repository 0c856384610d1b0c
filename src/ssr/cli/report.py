"""ssr-report RUN_DIR_OR_SWEEP_DIR... [--out DIR]: paper-shaped table + drift plots from run files."""

from __future__ import annotations

import argparse
from pathlib import Path

from ssr.report import write_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ssr-report", description=__doc__)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories or a multirun sweep directory")
    parser.add_argument("--out", type=Path, default=Path("report"), help="output directory")
    args = parser.parse_args(argv)
    print(write_report(args.runs, args.out))


if __name__ == "__main__":
    main()
