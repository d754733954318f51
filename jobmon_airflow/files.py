"""Files that hold state or results: written atomically and private by default. Standard library only.

One writer for every such file (exit records, array manifests, the local cluster's job files, the queue-limits
cache): a temporary file in the same directory, then a rename, so a reader sees the whole file or none.
``durable`` adds the fsyncs a result depends on (an exit record must survive a node crash; a cache need not).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def write_atomically(
    path: str | os.PathLike[str], text: str, *, durable: bool = False, mode: int = PRIVATE_FILE
) -> None:
    """Replace ``path`` with ``text`` (UTF-8) in one rename; OSError when it cannot be written (nothing left behind).

    The file gets ``mode`` whatever the umask. ``durable``: fsync the file before the rename and the directory
    after it, so the new content survives a crash of the node.
    """
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    # Unique per writer (processes and threads): concurrent writers of one path each rename a whole file.
    tmp = os.path.join(directory, f".{os.path.basename(target)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), mode)  # the umask may have taken bits away; a group the site allows needs them
            fh.write(text)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        with contextlib.suppress(OSError):  # not every file system lets a directory be opened
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def write_json(path: str | os.PathLike[str], data: Any, *, durable: bool = False, mode: int = PRIVATE_FILE) -> None:
    write_atomically(path, json.dumps(data), durable=durable, mode=mode)


def read_json(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when the file is missing, unreadable or not a JSON object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
