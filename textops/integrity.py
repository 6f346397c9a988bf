"""The served files' sha256: recorded at registration as registry version tags, checked before any load.

The manifest beside the files says the same, but whoever can write the artifact store can rewrite it too;
the tags live in the registry's database, so a changed byte in the store is caught before it is served.
"""

from __future__ import annotations

from pathlib import Path

from textops.cli import sha256
from textops.errors import PipelineError

TAG = "sha256."  # a version tag per file: sha256.<path inside the package folder> = hex digest


class IntegrityError(PipelineError):
    """Files that are not the ones registered: names each file, the expected and the actual hash."""


def digests(folder: Path) -> dict[str, str]:
    """Every file under `folder`, by its path inside it (posix), with its sha256."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def as_tags(files: dict[str, str]) -> dict[str, str]:
    return {f"{TAG}{path}": digest for path, digest in files.items()}


def expected(tags: dict[str, str]) -> dict[str, str]:
    """The registered digests, from a version's tags."""
    return {key.removeprefix(TAG): value for key, value in tags.items() if key.startswith(TAG)}


def mismatches(folder: Path, want: dict[str, str]) -> list[str]:
    """One line per file that differs from `want`: changed, missing, or not registered at all."""
    have = digests(folder)
    lines = [
        f"{path}: expected sha256 {digest}, actual {have.get(path, 'missing')}"
        for path, digest in sorted(want.items())
        if have.get(path) != digest
    ]
    lines += [f"{path}: not registered (actual sha256 {have[path]})" for path in sorted(set(have) - set(want))]
    return lines


def verify(folder: Path, tags: dict[str, str], what: str) -> None:
    """Raise IntegrityError unless `folder` holds exactly the files whose digests `tags` record."""
    want = expected(tags)
    if not want:
        raise IntegrityError(
            f"{what} has no {TAG}* tags, so its files cannot be checked; register it again (dvc repro) to record them"
        )
    wrong = mismatches(folder, want)
    if wrong:
        raise IntegrityError(f"{what}: files in {folder} are not the registered ones: " + "; ".join(wrong))
