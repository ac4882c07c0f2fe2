"""Shared plumbing of the workflow scripts: one argument parser, whole-or-nothing outputs.

Every script in ``workflows/`` takes ``--quick`` (the small CI version), ``--seed`` and
``--out`` (the output folder), writes its tables as CSV and Markdown and its figures as PNG,
and prints its headline table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that keeps the description's layout and states every option's default.

    Unlike :class:`argparse.ArgumentDefaultsHelpFormatter`, it says nothing for required options
    or where the help already states the default, ``off`` for flags and ``none`` for an unset
    value.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (not action.option_strings or action.required or action.default is argparse.SUPPRESS
                or "(default" in text):
            return text
        if action.nargs == 0 and action.default is False:  # a flag (store_true)
            shown = "off"
        elif action.default is None or action.default == []:
            shown = "none"
        else:
            shown = "%(default)s"
        return f"{text} (default: {shown})".lstrip()


def script_parser(description: str, default_out: str) -> argparse.ArgumentParser:
    """Argument parser with the options every workflow script shares."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small data and few draws (the version the test suite runs)")
    parser.add_argument("--seed", type=int, default=20260, help="random seed")
    parser.add_argument("--out", type=Path, default=Path(default_out), help="output folder")
    return parser


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Write a file whole or not at all (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_table(table: pd.DataFrame, out_dir: Path, name: str, floatfmt: str = ".4g") -> Path:
    """Write ``table`` as ``<name>.csv`` and ``<name>.md``; return the CSV path."""
    out_dir = Path(out_dir)
    write_atomic(out_dir / f"{name}.md", table.to_markdown(index=False, floatfmt=floatfmt) + "\n")
    return write_atomic(out_dir / f"{name}.csv", table.to_csv(index=False))


def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG, whole or not at all, and close it."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return write_atomic(Path(path), buffer.getvalue())


@contextmanager
def step(message: str) -> Iterator[None]:
    """Print a progress line around a long step (to stderr, so tables on stdout stay clean)."""
    print(f"[pluralstan] {message} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    yield
    print(f"[pluralstan] {message}: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr,
          flush=True)
