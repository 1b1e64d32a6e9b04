"""Option types shared by the commands: numbers checked when parsed, so a bad value is one
line before anything loads (NaN and infinity are never accepted; threads fit the machine)."""

from __future__ import annotations

import math
import os

import click


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS says)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class FiniteFloat(click.ParamType):
    """A finite float, optionally with bounds: `low < value` (or <=) and `value <= high`."""

    name = "number"

    def __init__(self, low: float | None = None, high: float | None = None, low_open: bool = False):
        self.low, self.high, self.low_open = low, high, low_open

    def convert(self, value, param, ctx) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"must be a finite number, got {value!r}", param, ctx)
        if self.low is not None and (number <= self.low if self.low_open else number < self.low):
            self.fail(f"must be {'>' if self.low_open else '>='} {self.low:g}, got {value!r}", param, ctx)
        if self.high is not None and number > self.high:
            self.fail(f"must be <= {self.high:g}, got {value!r}", param, ctx)
        return number


class Threads(click.ParamType):
    """CPU threads per engine: 1 up to the cores this process may use."""

    name = "count"

    def convert(self, value, param, ctx) -> int:
        cores = usable_cores()
        try:
            number = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a whole number", param, ctx)
        if not 1 <= number <= cores:
            self.fail(f"must be from 1 to {cores} (the cores this machine gives sdrt), got {value}", param, ctx)
        return number


#: TCP ports (0: any free port).
PORT = click.IntRange(0, 65535)
THREADS = Threads()


def with_options(command, options: list):
    """`command` decorated with `options` (click options), which then show in this order."""
    for option in reversed(options):
        command = option(command)
    return command
