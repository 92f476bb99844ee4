"""Shared helpers for the benchmark scripts (they print figures; they are not tests)."""

from __future__ import annotations

import os
import platform
import time

import torch


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{time.strftime('%Y-%m-%d')} | {platform.machine()} {os.cpu_count()} CPU cores | {gpu} | "
            f"torch {torch.__version__}")


def table(rows: list[dict], cols: list[str]) -> str:
    widths = {c: max(len(c), *(len(f"{r.get(c, '')}") for r in rows)) for c in cols}
    head = "  ".join(c.rjust(widths[c]) for c in cols)
    lines = [head, "  ".join("-" * widths[c] for c in cols)]
    for r in rows:
        lines.append("  ".join(f"{r.get(c, '')}".rjust(widths[c]) for c in cols))
    return "\n".join(lines)
