"""Files written whole or not at all: a temporary file in the same folder, then a rename.

The one home of atomic writes, below every other module (it imports only :mod:`.errors`), so the
engines' caches, the fits, the jobs' results and the reports all write the same way. Saved
files get the permissions a new file gets under the user's umask, and a name the file system
would refuse is refused first with a message that names it.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import PluralstanError

#: Characters of the target's name kept in its temporary file's name (the rest of the
#: temporary name is a dot, a random part and ``.tmp``), so that a name the file system accepts
#: always gets a temporary name it accepts too.
TEMP_PREFIX_CHARS = 100


def _umask() -> int:
    """The process's file-creation mask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _existing_ancestor(path: Path) -> Path:
    """The nearest ancestor of ``path`` (or ``path``'s folder) that exists."""
    folder = path.absolute().parent
    while True:
        try:
            os.stat(folder)  # Path.exists raises on a name the file system refuses
            return folder
        except OSError:
            folder = folder.parent


def _check_name(path: Path) -> None:
    """Refuse a file or folder name longer than the file system allows, naming it."""
    folder = _existing_ancestor(path)
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        limit = 255
    tail = path.absolute().relative_to(folder).parts
    for part in tail:
        if len(os.fsencode(part)) > limit:
            raise PluralstanError(
                f"cannot write {str(path)!r}: the name {part[:40]!r}... is "
                f"{len(os.fsencode(part))} bytes long and the file system allows at most "
                f"{limit}; choose a shorter name"
            )


def _temporary(path: Path) -> tuple[int, str]:
    """Create the folder and an empty temporary file next to ``path``: (descriptor, name)."""
    _check_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=f".{path.name[:TEMP_PREFIX_CHARS]}.", suffix=".tmp",
                                dir=path.parent)
    except OSError as err:
        if err.errno in (errno.ENAMETOOLONG, errno.ENOTDIR, errno.EEXIST):
            raise PluralstanError(f"cannot write {str(path)!r}: {err.strerror}") from err
        raise


def _publish(tmp: str | Path, path: Path) -> None:
    """Give the finished temporary file the mode a new file would get, and rename it.

    :func:`tempfile.mkstemp` creates files readable by their owner only (0600); a saved output
    gets ``0666 & ~umask``, like any file the user's programs create.
    """
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Write a file whole or not at all (temporary file in the same folder, then rename).

    The file gets the permissions of a newly created file under the user's umask.

    Raises
    ------
    PluralstanError
        When the name is too long for the file system or a parent is not a folder.
    """
    path = Path(path)
    fd, tmp = _temporary(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write ``path`` through, whole or not at all.

    The block writes the temporary file (e.g. ``idata.to_netcdf(tmp)``); when it ends without
    an exception the file gets the permissions of a new file under the user's umask and is
    renamed to ``path``, otherwise it is removed and ``path`` is left as it was.

    Examples
    --------
    >>> with atomic_path("fit.nc") as tmp:  # doctest: +SKIP
    ...     idata.to_netcdf(tmp, engine="h5netcdf")
    """
    path = Path(path)
    fd, tmp = _temporary(path)
    os.close(fd)
    try:
        yield Path(tmp)
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(path: str | Path) -> None:
    """Check, without leaving anything behind, that :func:`write_atomic` can write ``path``.

    For commands that run long before they write (``pluralstan fit``): a typo in the output
    path is reported before the work, not after it.

    Raises
    ------
    PluralstanError
        When ``path`` is a folder, a name is too long, the nearest existing ancestor is not a
        writable folder, or a file cannot be created next to ``path``.
    """
    path = Path(path)
    _check_name(path)
    if path.is_dir():
        raise PluralstanError(f"cannot write {str(path)!r}: it is a folder; give a file name")
    folder = _existing_ancestor(path)
    if not folder.is_dir():
        raise PluralstanError(
            f"cannot write {str(path)!r}: {str(folder)!r} is a file, not a folder"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PluralstanError(f"cannot write {str(path)!r}: folder {str(folder)!r} is not writable")
    if folder == path.absolute().parent:  # the folder exists: try the temporary file itself
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:TEMP_PREFIX_CHARS]}.",
                                       suffix=".tmp", dir=folder)
        except OSError as err:
            raise PluralstanError(f"cannot write {str(path)!r}: {err.strerror}") from err
        os.close(fd)
        Path(tmp).unlink()
