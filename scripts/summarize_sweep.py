#!/usr/bin/env python3
"""Rebuild sweep_summary.csv, sweep_summary.md, sweep.png and report.html for a finished or partial sweep directory.

    python scripts/summarize_sweep.py multirun/2026-11-23/10-00-00-123456-4242
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fmnist.artifacts.sweep import SUMMARY_MD, write_summary
from fmnist.errors import UserError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="the sweep directory (holds one folder per job)")
    args = parser.parse_args()
    if not args.sweep_dir.is_dir():
        print(f"summarize_sweep: error: {args.sweep_dir} is not a directory", file=sys.stderr)
        return 2
    try:
        rows = write_summary(args.sweep_dir)
    except UserError as exc:  # a read-only sweep directory, a full disk
        print(f"summarize_sweep: error: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print(f"summarize_sweep: error: no jobs (*/.hydra/overrides.yaml) under {args.sweep_dir}", file=sys.stderr)
        return 2
    print((args.sweep_dir / SUMMARY_MD).read_text(), end="")
    print(f"sweep_summary.csv, sweep_summary.md, sweep.png and report.html in {args.sweep_dir} are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
