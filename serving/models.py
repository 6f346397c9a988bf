"""Where the service's model comes from: the copy bundled in a Bento, or the MLflow registry.

`bentoml build` asks each model reference on the service for its info. `RegistryModel` answers by
resolving `name@alias` to an explicit registry version, importing that version's package folder
into the BentoML model store as `name:v<version>-<run id>`, and recording `name@alias` as the
Bento's alias for it. A served Bento finds its copy through that alias and never calls MLflow.
Served from the repository (`bentoml serve`), no alias is recorded: the service reads the registry
itself and follows the alias (registry mode).
"""

from __future__ import annotations

import gc
import logging
import shutil
import tempfile
import threading
import typing as t
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import attrs
import bentoml

from serving.bentoml_private import ModelReference, bento_model_aliases
from textops.errors import PipelineError

# Registry version tags that /metadata reports as metrics (written by the package stages of both tasks).
METRIC_TAGS = (
    "eval_accuracy",
    "fp32_accuracy",
    "int8_accuracy",
    "int8_accuracy_drop",
    "int8_agreement",
    "latency_ms_p50",
    "size_mb",
    "eval_perplexity",
    "fp32_perplexity",
    "int8_perplexity",
    "int8_perplexity_change",
    "int8_greedy_agreement",
    "tokens_per_s",
    "speedup_vs_pytorch",
)


class ModelSourceError(PipelineError):
    """The registry or the Bento cannot provide the model the service asks for."""


@dataclass(frozen=True)
class Source:
    """A package folder (INT8 ONNX, tokenizer, labels) and what is known of it."""

    path: Path
    metadata: dict[str, t.Any]


def metadata_of(name: str, alias: str, version: str) -> dict[str, t.Any]:
    from textops import registry

    tags = registry.require_version(name, version).tags
    metrics = {k: float(tags[k]) for k in METRIC_TAGS if k in tags}
    return {
        "name": name,
        "version": str(version),
        "alias": alias,
        "run_id": tags.get("run_id"),
        "metrics": metrics,
        "git_commit": tags.get("git_commit"),
        "data_hash": tags.get("data_hash"),
        "resolved_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def champion_version(name: str, alias: str) -> str:
    from textops import registry
    from textops.tracking import connect

    uri = connect()
    try:
        version = registry.version_of(name, alias)
    except PipelineError:
        raise
    except Exception as error:  # connection errors come as several types
        raise ModelSourceError(
            f"MLflow registry {uri} is unreachable ({type(error).__name__}: "
            f"{str(error)[:200]}); set MLFLOW_TRACKING_URI or start the server"
        ) from None
    if version is None:
        raise ModelSourceError(
            f"'{name}' has no '{alias}' version in {uri}: run `dvc repro`, then "
            f"`python -m textops.promote gate` (with --task story for the story model)"
        )
    return version


def from_registry(name: str, alias: str, version: str | None = None) -> Source:
    """The package folder of `name@alias` (or of `version`), downloaded when the store is remote."""
    import mlflow

    version = version or champion_version(name, alias)
    # One folder per version: a remote store would otherwise leave a new temporary copy per call.
    # A local store answers with the stored folder itself and ignores dst_path.
    cache = Path(tempfile.gettempdir()) / "textops-registry" / name / str(version)
    cache.mkdir(parents=True, exist_ok=True)
    root = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(cache)))
    package = root / "artifacts" / "package"
    if not (package / "model.onnx").is_file():
        raise ModelSourceError(f"'{name}' version {version} holds no artifacts/package/model.onnx (under {root})")
    return Source(package, {**metadata_of(name, alias, version), "source": "registry"})


def follow(
    name: str,
    alias: str,
    interval_s: float,
    stop: threading.Event,
    serving: t.Callable[[], str],
    swap: t.Callable[[Source], None],
    log: logging.Logger,
) -> None:
    """Registry mode: every `interval_s` until `stop`, load a new version of `name@alias` beside the
    one in service (`serving()` names it), then switch to it with `swap(source)`. A registry error
    (looking up the alias, or fetching the version) is retried at the next poll; a version whose files
    fail to load is set aside until the alias moves again."""
    broken = None
    while not stop.wait(interval_s):
        current = serving()
        try:
            version = champion_version(name, alias)
            if version in (current, broken):
                continue
            log.info("%s@%s moved to v%s: loading it beside v%s", name, alias, version, current)
            # Fetched here, not with the load below: a registry error while fetching (a remote store's
            # timeout, say) is no fault of the version, and must not set it aside for good.
            source = from_registry(name, alias, version)
        except Exception as error:  # a registry outage must not stop serving
            log.warning("could not follow %s@%s (%s); still serving v%s", name, alias, error, current)
            continue
        try:
            swap(source)
            log.info("now serving %s v%s", name, version)
        except Exception as error:
            broken = version
            log.warning(
                "could not follow %s@%s: v%s failed to load (%s); still serving v%s until the alias moves again",
                name,
                alias,
                version,
                error,
                current,
            )


class Hosted:
    """What both services do around their model: load it from `model_ref` (the Bento's copy, or the registry),
    and in registry mode follow the alias on a thread, loading a new version beside the one in service and
    then switching with one reference swap. Subclasses are the `@bentoml.service` classes; they call
    `host(load, ...)` in `__init__`. BentoML finds the inherited shutdown hook (it looks through `dir()`)."""

    model_ref: RegistryModel  # set on the subclass

    def host(self, load: t.Callable[[Source], t.Any], poll_interval_s: float, log: logging.Logger) -> None:
        self.ref = type(self).model_ref  # the reference itself; self.model_ref resolves it
        self.mode = "registry" if self.ref.bundled_tag() is None else "bento"
        self._load = load
        self.loaded = load(self.model_ref)
        log.info("serving %s v%s (%s mode)", self.loaded.metadata["name"], self.loaded.metadata["version"], self.mode)
        # Everything loaded so far (transformers, onnxruntime, mlflow: millions of objects) is long-lived:
        # move it out of the collector's sight, or each full collection stalls requests (gc.freeze docs).
        gc.collect()
        gc.freeze()
        self._stop = threading.Event()
        if self.mode == "registry":
            threading.Thread(
                target=follow,
                name="follow-alias",
                daemon=True,
                args=(
                    self.ref.name,
                    self.ref.alias,
                    poll_interval_s,
                    self._stop,
                    lambda: self.loaded.metadata["version"],
                    self._swap,
                    log,
                ),
            ).start()

    def __is_ready__(self) -> bool:
        return getattr(self, "loaded", None) is not None

    def _swap(self, source: Source) -> None:
        self.loaded = self._load(source)  # one reference swap: atomic

    @bentoml.on_shutdown
    def stop(self) -> None:
        self._stop.set()


def bento_tag(metadata: dict) -> str:
    # The run id keeps two registries' "version 1" apart in one BentoML store.
    return f"{metadata['name']}:v{metadata['version']}-{(metadata['run_id'] or 'norun')[:12]}"


@attrs.frozen
class RegistryModel(ModelReference[Source]):
    """`name@alias` in the MLflow registry, frozen to one version when a Bento is built."""

    name: str
    alias: str

    @property
    def key(self) -> str:
        return f"{self.name}@{self.alias}"

    def _bundle(self):
        """Import the alias's current version into the BentoML model store (once per tag)."""
        from bentoml.exceptions import NotFound

        source = from_registry(self.name, self.alias)
        tag = bento_tag(source.metadata)
        try:
            return bentoml.models.get(tag)
        except NotFound:
            pass
        labels = {"registered_model": self.name, "registry_version": source.metadata["version"], "alias": self.alias}
        with bentoml.models.create(tag, labels=labels, metadata=source.metadata) as stored:
            shutil.copytree(source.path, stored.path, dirs_exist_ok=True)
        return stored

    def to_info(self, alias: str | None = None):
        from bentoml.models import BentoModel

        # bentoml build asks more than once; resolve the alias once so the Bento holds one version.
        if getattr(self, "_stored", None) is None:
            object.__setattr__(self, "_stored", self._bundle())
        return BentoModel(self._stored.tag).to_info(alias=self.key)  # the stored copy's info, under name@alias

    @classmethod
    def from_info(cls, info):
        from bentoml.models import BentoModel

        return BentoModel.from_info(info)

    def to_create_schema(self):
        from bentoml.models import BentoModel

        return BentoModel(self.to_info().tag).to_create_schema()

    def bundled_tag(self) -> str | None:
        """The tag a built Bento recorded for this reference; None when served from the repository."""
        return bento_model_aliases().get(self.key)

    def resolve(self, base_path=None) -> Source:
        from bentoml.models import BentoModel

        tag = self.bundled_tag()
        if base_path is not None:  # exporting a Bento: copy the bundled model beside it
            BentoModel(tag or self.to_info().tag).resolve(base_path)
        if tag is None:
            return from_registry(self.name, self.alias)
        stored = bentoml.models.get(tag)
        return Source(Path(stored.path), {**stored.info.metadata, "source": "bento", "bento_model": tag})
