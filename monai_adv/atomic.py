# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0


"""Atomic file writes: every output is written to a temporary file beside it, then renamed into place.

A reader (or a resumed run) sees the old file or the new one, never a half-written one; a failed write leaves
no temporary file behind and names the file it could not write, saying so plainly when the disk is full.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Union

__all__ = ["DiskFullError", "write_atomic", "atomic_folder"]


class DiskFullError(OSError):
    """No space left on the device while writing an output file (the file named keeps its previous content)."""


def _is_disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # torch.save reports a failed write as a RuntimeError from its zip writer, without the OS error number
    text = str(error)
    return isinstance(error, RuntimeError) and ("inline_container" in text or "file write failed" in text)


def _disk_full(path: Path, error: BaseException) -> DiskFullError:
    return DiskFullError(
        errno.ENOSPC, f"the disk is full: could not write {path} (no space left on the device; {error})".strip()
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Union[str, Path], write: Callable[[Path], None], keep_suffix: bool = False) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    Args:
        path: the file to write.
        write: writes the content to the file it is given.
        keep_suffix: end the temporary name with the suffixes of ``path`` (".nii.gz"), for writers that choose
            the format from the file name; temporary names always start with "." and hold ".tmp".

    Raises:
        DiskFullError: when the device has no space left (``path`` keeps its previous content).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".tmp" + ("".join(path.suffixes) if keep_suffix else "")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # the mode of a file created with open(), not mkstemp's 0600
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        if _is_disk_full(e):
            raise _disk_full(path, e) from e
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


@contextmanager
def atomic_folder(out: Union[str, Path]) -> Iterator[Path]:
    """A temporary folder inside ``out`` for a writer that names its own files (e.g. MONAI's ``SaveImage``).

    On success every file written there is renamed into ``out`` (replacing older outputs only then); on any
    error the folder and everything in it are removed and ``out`` keeps its previous files.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".staging.", suffix=".tmp"))
    try:
        try:
            yield staging
        except (OSError, RuntimeError) as e:
            if _is_disk_full(e):
                raise _disk_full(out, e) from e
            raise
        for item in sorted(staging.iterdir()):
            os.chmod(item, 0o666 & ~_umask())
            os.replace(item, out / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
