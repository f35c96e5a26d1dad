"""Which commit produced a result: one helper for the benchmarks that write it down."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def git_head(*, short: bool = False, dirty_note: str = " (with uncommitted changes)") -> str:
    """HEAD's commit (`short`: git's abbreviation), plus `dirty_note` when tracked files
    differ from it; "unknown" outside a git checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", *(["--short"] if short else []), "HEAD"],
                             capture_output=True, text=True, cwd=ROOT, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=ROOT).stdout.strip()
        return sha + (dirty_note if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
