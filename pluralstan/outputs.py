"""Shared plumbing of the workflow scripts: one argument parser, whole-or-nothing outputs.

Every script in ``workflows/`` takes ``--quick`` (the small CI version), ``--seed`` and
``--out`` (the output folder), writes its tables as CSV and Markdown and its figures as PNG,
and prints its headline table.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from .files import write_atomic
from .models import REGISTRY
from .realdata import ENV_VAR as DATA_ENV_VAR


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


def run_script(main: Callable[[], int | None], name: str) -> int:
    """Run a workflow script's ``main`` and return its exit status.

    Ctrl-C ends the script as it ends the ``pluralstan`` command: one line on stderr (the
    interruption's own message, e.g. how many parallel jobs finished and where they are kept)
    and status 130, without a traceback; the engine has stopped its sampler processes.
    """
    try:
        return int(main() or 0)
    except KeyboardInterrupt as err:
        print(f"\n{name}: {str(err) or 'interrupted (Ctrl-C)'}", file=sys.stderr, flush=True)
        return 128 + signal.SIGINT


def script_parser(description: str, default_out: str) -> argparse.ArgumentParser:
    """Argument parser with the options every workflow script shares."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small data and few draws (the version the test suite runs)")
    parser.add_argument("--seed", type=int, default=20260, help="random seed")
    parser.add_argument("--out", type=Path, default=Path(default_out), help="output folder")
    return parser


def audit_parser(description: str, default_out: str) -> argparse.ArgumentParser:
    """The audit scripts' parser: :func:`pluralstan.outputs.script_parser` (``--quick``,
    ``--seed``, default 1 here, ``--out``) plus ``--data`` (the data folder), ``--chains`` and
    ``--draws`` (draws and warm-up per chain)."""
    parser = script_parser(description, default_out)
    parser.set_defaults(seed=1)
    parser.add_argument("--data", type=Path, default=None,
                        help=f"data folder (default: ${DATA_ENV_VAR} or ../shared/data)")
    parser.add_argument("--chains", type=int, default=4, help="chains (default 4)")
    parser.add_argument("--draws", type=int, default=1000,
                        help="draws (and warm-up) per chain (default 1000)")
    return parser


def model_list(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """The comma-separated ``--models`` of an audit script, each a registered model; an unknown
    name stops the script with a usage error naming it (before any data are read)."""
    names = [m for m in text.split(",") if m]
    unknown = [m for m in names if m not in REGISTRY]
    if unknown:
        parser.error(f"--models: unknown model {unknown[0]!r}; registered: {REGISTRY.list()}")
    return names


def write_table(table: pd.DataFrame, out_dir: Path, name: str, floatfmt: str = ".4g") -> Path:
    """Write ``table`` as ``<name>.csv`` and ``<name>.md``; return the CSV path."""
    out_dir = Path(out_dir)
    write_atomic(out_dir / f"{name}.md", table.to_markdown(index=False, floatfmt=floatfmt) + "\n")
    return write_atomic(out_dir / f"{name}.csv", table.to_csv(index=False))


def png_bytes(fig, dpi: int = 120) -> bytes:
    """A matplotlib figure as PNG bytes, cropped to its drawn area (for files and reports)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def save_figure(fig, path: str | Path, dpi: int = 120, close: bool = True) -> Path:
    """Save a matplotlib figure as PNG, whole or not at all (missing folders are created), and
    close it unless ``close=False``."""
    data = png_bytes(fig, dpi)
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return write_atomic(Path(path), data)


@contextmanager
def step(message: str) -> Iterator[None]:
    """Print a progress line around a long step (to stderr, so tables on stdout stay clean)."""
    print(f"[pluralstan] {message} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    yield
    print(f"[pluralstan] {message}: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr,
          flush=True)
