"""A registry-mode service's state folder: the version it set aside, and verified copies of the versions it served.

Where: `$BENTOML_HOME/textops/<registered model name>/` (BentoML's home: `~/bentoml` unless BENTOML_HOME says
otherwise), shared by both services' workers and by every restart on the machine, so it outlives a process:

    set_aside.json                    the version that failed verification or loading, and why; it is not tried
                                      again until the alias points elsewhere (then the entry is dropped)
    copies/v<version>-<run id>/       a version's package files, copied from the registry and checked against
                                      its registered sha256; registry mode loads every version from here
    copies/v<version>-<run id>.json   what /metadata reports of it, and the digests it is checked against
    last.json                         the copy last loaded and served; start-up falls back to it
    state.lock                        one worker at a time changes the folder

Two copies are kept: the last one served and the one before it (and any made within the hour).
"""

from __future__ import annotations

import json
import shutil
import time
import typing as t
from datetime import UTC, datetime
from pathlib import Path

from serving.bentoml_private import bentoml_home
from serving.models import Source
from textops.atomic import atomic_dir
from textops.cli import write_json  # whole or not at all (textops.atomic): a worker killed mid-write leaves the old

# A copy younger than this is never pruned: loading it takes a worker seconds, and it is no use if deleted meanwhile.
FRESH_S = 3600


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def copy_name(metadata: dict[str, t.Any]) -> str:
    # The run id keeps two registries' "version 1" apart, as in serving.models.bento_tag.
    return f"v{metadata['version']}-{(metadata.get('run_id') or 'norun')[:12]}"


def read_json(path: Path) -> t.Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


class State:
    def __init__(self, root: Path):
        from filelock import FileLock

        self.root = Path(root)
        self.copies = self.root / "copies"
        self.copies.mkdir(parents=True, exist_ok=True)
        self.lock = FileLock(str(self.root / "state.lock"))

    @classmethod
    def of(cls, name: str) -> State:
        return cls(bentoml_home() / "textops" / name)

    # ------------------------------------------------------------ the version set aside

    def aside(self) -> dict[str, str] | None:
        """{"version", "reason", "when"} of the version set aside, or None."""
        return read_json(self.root / "set_aside.json")

    def put_aside(self, version: str, reason: str) -> None:
        with self.lock:
            write_json(self.root / "set_aside.json", {"version": str(version), "reason": reason, "when": now()})

    def clear_aside(self) -> None:
        with self.lock:
            (self.root / "set_aside.json").unlink(missing_ok=True)

    # ------------------------------------------------------------ verified copies

    def keep(self, source: Source) -> Source:
        """A verified copy of `source` (a package just verified against its registered digests), made once."""
        name = copy_name(source.metadata)
        with self.lock:
            try:
                return self.copy(name, source.metadata)
            except Exception:  # absent, or changed since it was made: copy it again
                pass
            with atomic_dir(self.copies / name) as tmp:  # a worker killed mid-copy leaves no partial copy
                shutil.copytree(source.path, tmp, dirs_exist_ok=True)
                write_json(self.copies / f"{name}.json", {"metadata": source.metadata, "sha256": source.digests})
            return self.copy(name, source.metadata)

    def copy(self, name: str, metadata: dict[str, t.Any] | None = None) -> Source:
        """The copy `name`, checked against the digests recorded beside it (IntegrityError when a file changed);
        with the metadata recorded there unless `metadata` is given."""
        from textops import integrity

        record = read_json(self.copies / f"{name}.json")
        if record is None or not (self.copies / name).is_dir():
            raise FileNotFoundError(f"no copy {name} in {self.copies}")
        folder = self.copies / name
        integrity.verify(folder, integrity.as_tags(record["sha256"]), f"the local copy {folder}")
        return Source(folder, metadata if metadata is not None else record["metadata"], record["sha256"])

    def mark_last(self, source: Source) -> None:
        """`source` (a copy made by keep) loaded and is served: start-up falls back to it from now on."""
        with self.lock:
            before = read_json(self.root / "last.json") or {}
            name = copy_name(source.metadata)
            write_json(self.root / "last.json", {"copy": name, "when": now()})
            self.prune({name, before.get("copy")})

    def last(self) -> Source | None:
        """The copy last served, verified again (IntegrityError when a file changed since); None if there is none."""
        with self.lock:
            last = read_json(self.root / "last.json")
            if last is None:
                return None
            source = self.copy(last["copy"])
        return Source(source.path, {**source.metadata, "source": "local copy"}, source.digests)

    def prune(self, keep: set[str | None]) -> None:
        """Every copy but `keep`'s and those made in the last FRESH_S (another worker may be loading one), and
        temporaries a killed worker left (called under the lock: no live writer)."""
        for folder in self.copies.iterdir():
            fresh = not folder.name.startswith(".") and time.time() - folder.stat().st_mtime < FRESH_S
            if folder.is_dir() and folder.name not in keep and not fresh:
                shutil.rmtree(folder, ignore_errors=True)
                (self.copies / f"{folder.name}.json").unlink(missing_ok=True)
