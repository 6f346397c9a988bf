"""The model registry: register a package as a version, move aliases through a gate, keep an audit log.

Aliases: `challenger` (newest registered), `champion` (what serves), `previous` (the champion before).
MLflow keeps no history of aliases, so every change is appended to the registered model's tags as
`audit.NNNNN` (JSON: who, when, alias, from, to, reason, evidence). Changes made by hand in the UI
are honoured: everything reads the aliases live, and the next registry operation (or the service, when it
follows one) records each as a manual move and points `previous` at the version a hand-moved champion replaced
(reconcile), so `rollback` goes back there.
The mechanics are task-free: `judge` takes a task's scorer and decision rule (textops.tasks: the sentiment
gate scores accuracy, higher wins; the story gate perplexity, lower wins).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.metadata import version as installed
from pathlib import Path
from typing import Any

from textops import integrity
from textops.atomic import atomic_dir
from textops.cli import sha256
from textops.errors import PipelineError

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
AUDIT = "audit."
SERVING_PACKAGES = ("mlflow", "onnxruntime", "transformers", "tokenizers", "pandas", "numpy")


class RegistryError(PipelineError):
    """A registry request that cannot be carried out: names the model, version or alias."""


def client():
    import mlflow

    return mlflow.MlflowClient()


def who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = os.environ.get("USER", "unknown")
    return f"{user}@{socket.gethostname()}"


# ---------------------------------------------------------------- audit log and lock


def audit_log(name: str) -> list[dict]:
    tags = client().get_registered_model(name).tags
    return [json.loads(tags[k]) for k in sorted(k for k in tags if k.startswith(AUDIT))]


def record(
    name: str,
    alias: str,
    old: str | None,
    new: str | None,
    reason: str,
    evidence: dict | None = None,
    by: str | None = None,
) -> dict:
    """Append one alias change to the audit log (call under promotion_lock). `by`: who made it, when not us."""
    entries = [k for k in client().get_registered_model(name).tags if k.startswith(AUDIT)]
    entry = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "who": by or who(),
        "alias": alias,
        "from": old,
        "to": new,
        "reason": reason,
        "evidence": evidence or {},
    }
    client().set_registered_model_tag(name, f"{AUDIT}{len(entries) + 1:05d}", json.dumps(entry)[:7500])
    return entry


@contextmanager
def promotion_lock(name: str, timeout: float = 120.0):
    """One alias change at a time: a file lock beside a local store; on a server, server_lock."""
    from filelock import FileLock, Timeout

    import mlflow

    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        lock = FileLock(str(Path(uri.removeprefix("sqlite:///")).with_suffix(f".{name}.promote.lock")))
        try:
            with lock.acquire(timeout=timeout):
                yield
        except Timeout:
            raise RegistryError(f"another promotion of '{name}' held the lock for {timeout:.0f} s; try again") from None
        return
    with server_lock(name, timeout):
        yield


LOCK_SUFFIX = ".promotion-lock"  # the lock's registered model on a server: `<name>.promotion-lock`
LOCK_LEASE_S = 600.0  # a lock older than this is taken as its holder's death (a promotion takes seconds)


@contextmanager
def server_lock(name: str, timeout: float):
    """A tracking server has no lock API, but creating a registered model is atomic (the database's unique name):
    holding the lock is having created `<name>.promotion-lock`, releasing it is deleting it. Its description
    says who holds it; a lock past LOCK_LEASE_S (its holder died) is broken by the next waiter."""
    from mlflow.exceptions import MlflowException

    lock = f"{name}{LOCK_SUFFIX}"
    holder = f"{who()} pid {os.getpid()} since {datetime.now(UTC).isoformat(timespec='seconds')}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            client().create_registered_model(lock, description=holder)
            break
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        try:
            held = client().get_registered_model(lock)
        except MlflowException:
            continue  # released meanwhile: try again at once
        if held.creation_timestamp / 1000 < time.time() - LOCK_LEASE_S:
            with contextlib.suppress(MlflowException):  # another waiter broke it first
                client().delete_registered_model(lock)
            continue
        if time.monotonic() > deadline:
            raise RegistryError(f"another promotion of '{name}' holds the lock ({held.description}); try again")
        time.sleep(0.2)
    try:
        yield
    finally:
        client().delete_registered_model(lock)


# ---------------------------------------------------------------- aliases


def live(name: str, alias: str) -> str | None:
    """The version an alias points at now, as MLflow has it (None: no such alias)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client().get_model_version_by_alias(name, alias).version)
    except MlflowException as error:
        if "RESOURCE_DOES_NOT_EXIST" not in str(error.error_code) and "not found" not in str(error):
            raise
        return None


def logged(name: str, alias: str, log: list[dict] | None = None) -> str | None:
    """Where the audit log last put an alias (None: never set, or removed)."""
    for entry in reversed(audit_log(name) if log is None else log):
        if entry["alias"] == alias:
            return entry["to"]
    return None


def reconcile(name: str) -> list[dict]:
    """Record alias moves made outside textops (the MLflow UI, a raw client), as the log would have had them
    (call under promotion_lock). A hand-moved champion also moves `previous` to the version it replaced, so
    `rollback` returns there. Returns the entries written."""
    written = []
    # previous first: a hand move of previous is recorded before a champion move sets it.
    for alias in (CHALLENGER, PREVIOUS, CHAMPION):
        was, now = logged(name, alias), live(name, alias)
        if was == now or (now is None and not _exists(name, was)):
            continue  # unchanged, or the alias went with its deleted version (version_of names that)
        noticed = f"moved outside textops (MLflow UI or client); noticed by {who()}"
        written.append(record(name, alias, was, now, noticed, {"manual": True}, by="unknown (hand move)"))
        if alias == CHAMPION and was is not None and now is not None and live(name, PREVIOUS) != was:
            if _exists(name, was):
                move(name, PREVIOUS, was, f"v{was} was replaced by the hand-moved champion v{now}")
                written.append(audit_log(name)[-1])
    return written


def _exists(name: str, version: str | None) -> bool:
    from mlflow.exceptions import MlflowException

    if version is None:
        return False
    try:
        client().get_model_version(name, str(version))
        return True
    except MlflowException:
        return False


def notice_hand_moves(name: str, timeout: float = 120.0) -> list[dict]:
    """reconcile() under the lock: for callers outside a registry operation (the service, status). The lock is
    taken only when an alias differs from the log: each worker of a service checks after every swap, and on a
    server the lock is a few round trips that a promotion in progress would make them wait for."""
    log = audit_log(name)
    if all(logged(name, alias, log) == live(name, alias) for alias in (CHALLENGER, PREVIOUS, CHAMPION)):
        return []
    with promotion_lock(name, timeout):
        return reconcile(name)


def version_of(name: str, alias: str) -> str | None:
    """The version an alias points at, or None; an alias whose version was deleted is an error."""
    current = live(name, alias)
    if current is not None:
        return current
    # MLflow drops an alias with its version: if the log says the alias was set, say what happened.
    was = logged(name, alias)
    if was is not None and not _exists(name, was):
        raise RegistryError(
            f"alias '{alias}' of '{name}' pointed at version {was}, which no longer exists (deleted?). "
            f"Set it again: `python -m textops.promote promote --version N --force --reason ...` or "
            f"`python -m textops.promote rollback`"
        )
    return None  # never set, removed through textops, or removed by hand (reconcile records that)


def require_version(name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client().get_model_version(name, str(version))
    except MlflowException:
        raise RegistryError(f"'{name}' has no version {version}") from None


def move(name: str, alias: str, new: str | None, reason: str, evidence: dict | None = None) -> None:
    """Point an alias at a version (or remove it) and log the change (call under promotion_lock)."""
    try:
        old = version_of(name, alias)
    except RegistryError:
        old = None  # the old version is gone: the log already says so
    if old == new:
        return
    if new is None:
        client().delete_registered_model_alias(name, alias)
    else:
        client().set_registered_model_alias(name, alias, str(new))
    record(name, alias, old, new, reason, evidence)


# ---------------------------------------------------------------- verified packages


def package_cache(name: str, version: str) -> Path:
    """Where a version's files are downloaded: one folder per registry and version, so a remote store is fetched
    once, and two stores' "version 1" of one name never share a folder."""
    import hashlib
    import tempfile

    import mlflow

    store = hashlib.sha256(mlflow.get_registry_uri().encode()).hexdigest()[:12]
    base = Path(os.environ.get("TEXTOPS_REGISTRY_CACHE", Path(tempfile.gettempdir()) / "textops-registry"))
    return base / store / name / str(version)


def package_lock(name: str, version: str):
    """The machine-wide lock on a version's download folder: held while it is fetched, and by a reader that
    copies it (serving/models.py). One object per path in a process (is_singleton), so holding it across a call
    to fetch_package does not deadlock."""
    from filelock import FileLock

    cache = package_cache(name, version)
    cache.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(cache.parent / f".{cache.name}.lock"), is_singleton=True)


def fetch_package(name: str, version: str) -> Path:
    """The package folder of `name` version `version` (INT8 ONNX, tokenizer, labels), downloaded when the store
    is remote, and checked file by file against the sha256 tags written at registration (IntegrityError
    otherwise). Nothing is unpickled: the folder holds data files only, and callers load them directly.

    A download already in the cache that still matches the tags is used as it is; otherwise the version is
    downloaded into a temporary folder, checked there, and only then renamed into place (textops.atomic), so a
    failed or killed download never replaces a good copy."""
    import mlflow

    tags = require_version(name, version).tags
    cache = package_cache(name, version)
    with package_lock(name, version):
        if (cached := cached_package(cache)) is not None:
            try:
                integrity.verify(cached, tags, f"'{name}' version {version}")
                return cached
            except integrity.IntegrityError:
                pass  # a copy from before the tags changed, or damaged on disk: fetched again below
        with atomic_dir(cache) as tmp:
            # MLflow copies the whole logged model into dst_path, even from a local store; what is checked is
            # the copy.
            uri = f"models:/{name}/{version}"
            mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp))
            if (package := cached_package(tmp)) is None:
                raise RegistryError(f"'{name}' version {version} holds no artifacts/package/model.onnx")
            integrity.verify(package, tags, f"'{name}' version {version}")
        return cached_package(cache)


def cached_package(folder: Path) -> Path | None:
    """The package folder inside a downloaded version (the logged model's artifacts), if it holds a model."""
    package = folder / "artifacts" / "package"
    return package if (package / "model.onnx").is_file() else None


# ---------------------------------------------------------------- registration


def requirements() -> list[str]:
    # Explicit: inferring them offline hangs for minutes on Hub look-ups (STACK_NOTES.md).
    return [f"{p}=={installed(p)}" for p in SERVING_PACKAGES]


def register(
    name: str,
    run_id: str,
    package_dir: Path,
    fp32_dir: Path,
    evidence: dict[str, str],
    flavour: Callable[[Path], tuple],
) -> str:
    """Log the package as a pyfunc in the run, register it as a new version, tag it, alias challenger.
    `flavour(package_dir)` is the task's (textops.tasks): pyfunc, input example, its output, params schema."""
    from mlflow.models import infer_signature

    import mlflow

    if not (package_dir / "model.onnx").is_file():
        raise RegistryError(f"{package_dir}/model.onnx is missing: run the package stage first (dvc repro)")
    python_model, example, output, params = flavour(package_dir)
    # Hashed before logging: the tags hold what the package stage built, and every loader checks against them.
    digests = integrity.as_tags(integrity.digests(package_dir))
    version = None
    try:
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=python_model,
                artifacts={"package": str(package_dir)},
                code_paths=[str(Path(__file__).parent)],
                signature=infer_signature(example, output, params),
                input_example=example,
                pip_requirements=requirements(),
                registered_model_name=name,
            )
        version = str(info.registered_model_version)
        client().log_artifacts(run_id, str(fp32_dir), "fp32_model")
        tags = {**evidence, **digests, "fp32_model": f"runs:/{run_id}/fp32_model", "run_id": run_id}
        for key, value in tags.items():
            client().set_model_version_tag(name, version, key, str(value))
        with promotion_lock(name):
            reconcile(name)
            move(name, CHALLENGER, version, "registered by the package stage", evidence)
    except Exception:
        if version is not None:  # no half-registered version: drop it when a later step failed
            client().delete_model_version(name, version)
        raise
    return version


# ---------------------------------------------------------------- the gate


def judge(
    name: str,
    eval_path: Path,
    score: Callable[[str], dict],
    decide_fn: Callable[[dict, dict | None], list[str]],
    version: str | None = None,
) -> dict:
    """Challenger (or `version`) against champion, each scored by `score` on the same frozen eval set; moves
    aliases on pass. `score(version)` gives the task's metric ({"accuracy": ..} or {"perplexity": ..})."""
    if not Path(eval_path).is_file():
        raise RegistryError(f"frozen eval set {eval_path} not found (run `dvc repro` or pass --eval)")
    with promotion_lock(name):
        reconcile(name)
        candidate = str(version) if version else version_of(name, CHALLENGER)
        if candidate is None:
            current = version_of(name, CHAMPION)
            if current is None:
                raise RegistryError(f"'{name}' has no '{CHALLENGER}' version to judge; run `dvc repro` to register one")
            return {
                "decision": "unchanged",
                "version": current,
                "reasons": [f"no '{CHALLENGER}' waiting; champion v{current} stays"],
            }
        tags = require_version(name, candidate).tags
        champion_version = version_of(name, CHAMPION)
        if champion_version == candidate:
            return {"decision": "unchanged", "version": candidate, "reasons": [f"v{candidate} is already champion"]}
        scored = score(candidate)
        challenger = {**tags, "version": candidate, **scored}
        champion = None if champion_version is None else {"version": champion_version, **score(champion_version)}
        reasons = decide_fn(challenger, champion)
        evidence = {
            "eval_set_sha256": sha256(Path(eval_path)),
            **{f"challenger_{k}": v for k, v in scored.items()},
            **{f"champion_{k}": champion and champion[k] for k in scored},
            "champion_version": champion_version,
        }
        c = client()
        c.set_model_version_tag(name, candidate, "gate.decision", "refused" if reasons else "promoted")
        c.set_model_version_tag(name, candidate, "gate.reasons", "; ".join(reasons)[:4900] or "none")
        c.set_model_version_tag(name, candidate, "gate.evidence", json.dumps(evidence))
        evidence["run_id"] = tags.get("run_id")
        if reasons:
            return {"decision": "refused", "version": candidate, "reasons": reasons, "evidence": evidence}
        if champion_version is not None:
            move(name, PREVIOUS, champion_version, f"replaced by v{candidate}", evidence)
        move(name, CHAMPION, candidate, "passed the promotion gate", evidence)
        if version_of(name, CHALLENGER) == candidate:
            move(name, CHALLENGER, None, f"v{candidate} became champion")
        return {"decision": "promoted", "version": candidate, "reasons": [], "evidence": evidence}


def force(name: str, version: str, reason: str) -> dict:
    """The human override: make `version` champion whatever the gate says."""
    if not reason.strip():
        raise RegistryError('--force needs --reason "..." saying why (it goes into the audit log)')
    with promotion_lock(name):
        reconcile(name)
        require_version(name, version)
        old = version_of(name, CHAMPION)
        if old == str(version):
            return {"decision": "unchanged", "version": str(version)}
        if old is not None:
            move(name, PREVIOUS, old, f"replaced by forced v{version}")
        move(name, CHAMPION, str(version), f"forced: {reason}")
        return {"decision": "forced", "version": str(version), "previous": old}


def rollback(name: str, reason: str = "rollback") -> dict:
    """champion goes back to `previous`; the rolled-back version becomes `previous`, so a second rollback undoes it."""
    with promotion_lock(name):
        reconcile(name)
        back_to = version_of(name, PREVIOUS)
        if back_to is None:
            raise RegistryError(f"'{name}' has no '{PREVIOUS}' version to roll back to")
        current = version_of(name, CHAMPION)
        move(name, CHAMPION, back_to, reason)
        move(name, PREVIOUS, current, f"rolled back from v{current}")
        return {"decision": "rolled_back", "version": back_to, "previous": current}
