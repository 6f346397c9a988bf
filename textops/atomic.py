"""Outputs appear whole or not at all.

Each output is written under a temporary sibling name, `.<name>.tmp-<pid>` in the same folder (one filesystem,
so the rename is atomic), and renamed into place only once complete. A stage killed, or out of disk space, in
mid-write leaves the previous output or none, never a half-written model that a later stage trusts (`dvc repro
-s`, a stage run by hand, or a flow's retry). The temporaries sit beside the output, never inside a DVC-tracked
folder, so DVC does not hash them; the next write of the same output removes any a killed run left.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from glob import escape
from pathlib import Path

MARK = ".tmp-"


def temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}{MARK}{os.getpid()}")


def leftovers(path: Path) -> list[Path]:
    """Temporaries of `path` from earlier runs. Any pid's: DVC's repository lock lets one stage at a time write
    an output, so none belongs to a live writer."""
    return sorted(path.parent.glob(f".{escape(path.name)}{MARK}*"))


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def replace(tmp: Path, path: Path) -> None:
    """os.replace, also where a folder is involved: rename() cannot put a folder over anything but an empty
    folder, so the old output is renamed aside first and deleted after. For that instant `path` is absent,
    never partial."""
    if not (tmp.is_dir() or path.is_dir()) or not os.path.lexists(path):
        os.replace(tmp, path)
        return
    aside = path.with_name(f"{tmp.name}-old")  # a leftover name too, should a kill land before the delete
    os.replace(path, aside)
    os.replace(tmp, path)
    remove(aside)


@contextmanager
def staged(path: Path, folder: bool) -> Iterator[Path]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in leftovers(path):
        remove(stale)
    tmp = temporary(path)
    if folder:
        tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        # The old output stays as it was; deleting the partial one gives a full disk its space back.
        remove(tmp)
        raise
    replace(tmp, path)


def atomic_dir(path: Path) -> AbstractContextManager[Path]:
    """`with atomic_dir(out) as tmp:` fill the empty folder tmp; on a clean exit it becomes `out`, replacing
    the old one; on an error it is deleted and `out` is left as it was."""
    return staged(path, folder=True)


def atomic_file(path: Path) -> AbstractContextManager[Path]:
    """`with atomic_file(out) as tmp:` write the file tmp, which becomes `out` on a clean exit. Its name does
    not end in out's suffix: give a writer that picks the format by suffix the format itself."""
    return staged(path, folder=False)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
