"""Files that hold state or results: written atomically and private by default. Standard library only.

One writer for every such file (exit records, array manifests, the local cluster's job files, the queue-limits
cache): a temporary file in the same directory, then a rename, so a reader sees the whole file or none.
``durable`` adds the fsyncs a result depends on (an exit record must survive a node crash; a cache need not).

Private means this user only, whatever the umask: files 0600, directories 0700 (a log root may be shared by many
users; what Jobmon writes there holds commands, tokens and results).

The worker node writes its exit record with this module at every job's start and end, so it imports only what
``write_atomically`` needs (``json`` and ``pathlib`` are imported by the functions that use them).
"""

from __future__ import annotations

import contextlib
import os
import stat

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy and ruff read the name)
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any, BinaryIO

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
_TMP_ATTEMPTS = 8  # fresh temporary names tried when one is taken (planted, or an astronomically rare clash)


def make_private_dirs(path: str | os.PathLike[str], mode: int = PRIVATE_DIR) -> Path:
    """``mkdir -p path``, every directory it creates getting ``mode`` whatever the umask.

    Directories that already exist (or links to them, as for ``mkdir -p``) are left as they are: a site's shared
    log root keeps its mode. OSError when a component exists and is not a directory.
    """
    from pathlib import Path

    return Path(_make_private_dirs(os.fspath(path), mode))


def _make_private_dirs(path: str, mode: int) -> str:
    target = os.path.abspath(path)
    missing: list[str] = []
    current = target
    while not os.path.isdir(current):
        missing.append(current)  # a non-directory here makes mkdir below fail with FileExistsError
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            if os.path.isdir(directory):
                continue  # created by a concurrent caller: theirs to set up
            raise
        # mkdir applied the umask; set the mode on the directory we made (never through a link put in its place).
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
    return target


def _token_hex() -> str:
    """A random name part, as ``secrets.token_hex(8)`` makes it (``secrets`` costs its importers ~3 ms)."""
    return os.urandom(8).hex()


def write_atomically(
    path: str | os.PathLike[str], text: str, *, durable: bool = False, mode: int = PRIVATE_FILE
) -> None:
    """Replace ``path`` with ``text`` (UTF-8) in one rename; OSError when it cannot be written (nothing left behind).

    The file gets ``mode`` whatever the umask; a missing directory is created private (:func:`make_private_dirs`).
    The temporary file is created anew (``O_EXCL | O_NOFOLLOW``): nothing planted at its name is followed or
    overwritten. ``durable``: fsync the file before the rename and the directory after it, so the new content
    survives a crash of the node.
    """
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    _make_private_dirs(directory, PRIVATE_DIR)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(_TMP_ATTEMPTS):
        # Unique per writer (processes and threads): concurrent writers of one path each rename a whole file.
        tmp = os.path.join(directory, f".{os.path.basename(target)}.{os.getpid()}.{_token_hex()}.tmp")
        try:
            fd = os.open(tmp, flags, mode)
        except FileExistsError:
            continue  # not ours (O_EXCL: a link there is neither followed nor removed): try another name
        break
    else:
        raise FileExistsError(f"cannot create a temporary file for {target}: {_TMP_ATTEMPTS} names were taken")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), mode)  # the umask may have taken bits away
            fh.write(text)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # ours: created by the O_EXCL open above
        raise
    if durable:
        with contextlib.suppress(OSError):  # not every file system lets a directory be opened
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def open_private_append(path: str | os.PathLike[str]) -> BinaryIO:
    """``open(path, "ab")`` for a log: created 0600 whatever the umask (an existing file of this user is made
    0600 too), never through a link at ``path``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, PRIVATE_FILE)
    try:
        st = os.fstat(fd)
        if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) != PRIVATE_FILE:
            os.fchmod(fd, PRIVATE_FILE)
        return os.fdopen(fd, "ab")
    except BaseException:
        os.close(fd)
        raise


def write_json(path: str | os.PathLike[str], data: Any, *, durable: bool = False, mode: int = PRIVATE_FILE) -> None:
    import json

    write_atomically(path, json.dumps(data), durable=durable, mode=mode)


def read_json(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when the file is missing, unreadable or not a JSON object."""
    import json

    try:
        with open(path, encoding="utf-8") as fh:
            data = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
