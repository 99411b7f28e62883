"""Atomic file writes: outputs appear whole or not at all.

A writer writes to a hidden temporary beside the output, ``.NAME.edgeq-tmp-PID-RANDOM``, and
renames it onto ``NAME`` when done. A SIGKILLed writer leaves its temporary behind; the next
writer in that folder removes the temporaries whose PID no longer runs (``clean_stale_temps``).
Output paths are checked before the work (``check_output_file``, ``check_output_dir``), so a bad
path fails in a second, not after a long quantize or compile.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from edgeq.errors import OutputPathError

TEMP_TAG = ".edgeq-tmp-"
_TEMP_NAME = re.compile(r"^\..+\.edgeq-tmp-(\d+)-")


def _temp_prefix(path: Path) -> str:
    return f".{path.name}{TEMP_TAG}{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries (files or folders) that edgeq writers whose process is gone left in
    ``folder``; returns what was removed."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if not match or _pid_alive(int(match.group(1))):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:
            pass  # another cleaner got there first, or not ours to remove
    return removed


def _first_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_folder_writable(folder: Path, what: str) -> None:
    """``folder`` (to be created if missing) can hold new files: its nearest existing ancestor
    is a writable folder."""
    existing = _first_existing(folder.absolute())
    if not existing.is_dir():
        raise OutputPathError(f"{what}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what}: folder {existing} is not writable")
    try:  # root passes os.access everywhere; a read-only file system only shows on a real write
        fd, probe = tempfile.mkstemp(prefix=f".probe{TEMP_TAG}{os.getpid()}-", dir=existing)
    except OSError as exc:
        raise OutputPathError(f"{what}: folder {existing} is not writable ({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(path: str | os.PathLike) -> Path:
    """An OutputPathError unless a file can be written at ``path``; call it before the work."""
    path = Path(path)
    if str(path) == "" or path.name in ("", ".", ".."):
        raise OutputPathError(f"output {str(path)!r}: not a file name")
    if path.is_dir():
        raise OutputPathError(f"output {path}: is a directory")
    _check_folder_writable(path.parent, f"output {path}")
    return path


def check_output_dir(path: str | os.PathLike) -> Path:
    """An OutputPathError unless ``path`` is (or can be created as) a writable folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"output folder {path}: is a file")
    _check_folder_writable(path, f"output folder {path}")
    return path


def _publish_mode(tmp_path: Path) -> None:
    """mkstemp makes 0600 files; an output gets the mode a plain open() would give it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, (tmp_path.stat().st_mode | 0o644) & ~umask & 0o7777)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    ``keep_suffix`` gives the temporary file ``path``'s suffix, for writers that choose the
    format by extension (TVM's ``export_library``).
    """
    path = check_output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent)
    suffix = path.suffix if keep_suffix else ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _publish_mode(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary folder beside ``path`` for writers that stage several files (a
    model and its external data); removed on exit, whatever happens. The caller moves the
    finished files out of it."""
    path = Path(path)
    _check_folder_writable(path.parent, f"output {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), dir=path.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
