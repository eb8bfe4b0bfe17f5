"""Atomic file writes: a temporary file in the target folder, then ``os.replace``.

A reader never sees a half-written file, and an interrupted write leaves the old file (or none).
"""

import contextlib
import json
import os
import pathlib
import tempfile
from typing import Any, Iterator, Optional, Union

PathLike = Union[str, pathlib.Path]


@contextlib.contextmanager
def atomic_target(path: PathLike, suffix: str = "") -> Iterator[pathlib.Path]:
    """Yield a temporary path beside ``path`` that replaces ``path`` when the block succeeds.

    The parent folder is created. On any error the temporary file is removed and ``path`` is
    left as it was. ``suffix`` keeps the file type for writers that infer it from the name.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        yield pathlib.Path(tmp_name)
        os.replace(tmp_name, path)
    except BaseException:
        pathlib.Path(tmp_name).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: PathLike, data: bytes) -> pathlib.Path:
    """Write ``data`` to ``path`` atomically, creating the parent folder."""
    with atomic_target(path) as tmp_path:
        tmp_path.write_bytes(data)
    return pathlib.Path(path)


def write_text_atomic(path: PathLike, text: str) -> pathlib.Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: PathLike, content: Any, indent: Optional[int] = 1) -> pathlib.Path:
    """Write ``content`` as JSON to ``path`` atomically; ``indent=None`` writes it compact."""
    return write_text_atomic(path, json.dumps(content, indent=indent))
