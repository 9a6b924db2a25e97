"""The live timeline: one line per thing that happened, timestamps relative to the start."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

COLOURS = {
    "RESERVED": "\033[1;32m",
    "RELEASED": "\033[1;34m",
    "SKIPPED": "\033[1;33m",
    "NEW POD": "\033[36m",
    "ACTION": "\033[1m",
    "LEADER": "\033[35m",
    "LOST": "\033[1;31m",
    "FAIL": "\033[1;31m",
    "INFO": "\033[2m",
}
RESET = "\033[0m"


@dataclass
class Timeline:
    out: TextIO = sys.stdout
    colour: bool = field(default_factory=lambda: sys.stdout.isatty())
    started: float = field(default_factory=time.monotonic)
    lines: list[tuple[float, str, str]] = field(default_factory=list)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def emit(self, kind: str, text: str) -> None:
        at = self.elapsed()
        self.lines.append((at, kind, text))
        label = f"{kind:<9}"
        if self.colour:
            label = f"{COLOURS.get(kind, '')}{label}{RESET}"
        self.out.write(f"[{at:6.1f}s] {label} {text}\n")
        self.out.flush()

    def heading(self, text: str) -> None:
        bold = ("\033[1m", RESET) if self.colour else ("", "")
        self.out.write(f"\n{bold[0]}{text}{bold[1]}\n")
        self.out.flush()

    def count(self, kind: str) -> int:
        return sum(1 for _, k, _ in self.lines if k == kind)
