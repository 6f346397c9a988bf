"""Where the service's model comes from: the copy bundled in a Bento, or the MLflow registry; checked either way.

`bentoml build` asks each model reference on the service for its info. `RegistryModel` answers by
resolving `name@alias` to an explicit registry version, fetching that version's package folder through
`textops.registry.fetch_package` (which refuses files whose sha256 differs from the version's tags), importing
it into the BentoML model store as `name:v<version>-<run id>` with those digests in the model's metadata, and
recording `name@alias` as the Bento's alias for it. A served Bento finds its copy through that alias, checks
it against the recorded digests before loading, and never calls MLflow.
Served from the repository (`bentoml serve`), no alias is recorded: the service reads the registry
itself and follows the alias (registry mode, serving/hosting.py).
"""

from __future__ import annotations

import os
import shutil
import typing as t
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import attrs
import bentoml

from serving.bentoml_private import ModelReference, bento_model_aliases
from textops.errors import PipelineError

if t.TYPE_CHECKING:
    from serving.state import State

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
# In a bundled BentoML model: the package files sit in this subfolder, beside BentoML's own model.yaml, and the
# model's metadata holds their registered sha256 under DIGESTS.
PACKAGE = "package"
DIGESTS = "sha256"


class ModelSourceError(PipelineError):
    """The registry or the Bento cannot provide the model the service asks for."""


@dataclass(frozen=True)
class Source:
    """A package folder (INT8 ONNX, tokenizer, labels), what is known of it, and the sha256 of each of its files
    as registered (path inside the folder -> hex digest)."""

    path: Path
    metadata: dict[str, t.Any]
    digests: dict[str, str] = field(default_factory=dict)


def describe(name: str, alias: str, version: str) -> tuple[dict[str, t.Any], dict[str, str]]:
    """What /metadata reports of a registry version, and the file digests registered with it."""
    from textops import integrity, registry

    tags = registry.require_version(name, version).tags
    metrics = {k: float(tags[k]) for k in METRIC_TAGS if k in tags}
    metadata = {
        "name": name,
        "version": str(version),
        "alias": alias,
        "run_id": tags.get("run_id"),
        "metrics": metrics,
        "git_commit": tags.get("git_commit"),
        "data_hash": tags.get("data_hash"),
        "resolved_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return metadata, integrity.expected(tags)


def bound_registry_calls(poll_interval_s: float) -> None:
    """MLflow's HTTP client retries a failed call 7 times with exponential back-off, about two minutes against a
    tracking server that is down, before it raises. The service asks again at every poll anyway, so its calls
    give up after one retry and a timeout of `poll_interval_s` (at least 5 s): a start with the registry down
    degrades in seconds instead of leaving /readyz unanswered for minutes. Values set in the environment win."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(5, round(poll_interval_s))))


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


@contextmanager
def registry_package(name: str, alias: str, version: str) -> Iterator[Source]:
    """Version `version` of `name`, fetched and verified by `textops.registry.fetch_package` (IntegrityError when a
    file differs from its sha256 tag), under the download folder's lock until the caller has copied it: that
    folder is shared by every process on the machine (both workers fetch a new version at the same poll)."""
    from textops import registry

    with registry.package_lock(name, version):
        path = registry.fetch_package(name, version)
        metadata, digests = describe(name, alias, version)
        yield Source(path, {**metadata, "source": "registry"}, digests)


def from_registry(name: str, alias: str, version: str | None = None) -> Source:
    """The verified package folder of `name@alias` (or of `version`), in the shared download folder."""
    version = version or champion_version(name, alias)
    with registry_package(name, alias, version) as source:
        return source


def fetch(name: str, alias: str, version: str, state: State) -> Source:
    """Registry mode: `version` fetched, verified, and copied into the service's state folder, which is where it
    is loaded from (and what start-up falls back to later: serving/state.py)."""
    with registry_package(name, alias, version) as source:
        return state.keep(source)


def bento_tag(metadata: dict) -> str:
    # The run id keeps two registries' "version 1" apart in one BentoML store.
    return f"{metadata['name']}:v{metadata['version']}-{(metadata['run_id'] or 'norun')[:12]}"


def bundled(stored, tag: str) -> Source:
    """The package folder of a bundled BentoML model, checked against the digests recorded when it was bundled."""
    from textops import integrity

    metadata = dict(stored.info.metadata)
    digests = metadata.pop(DIGESTS, None)
    if not digests:
        raise ModelSourceError(
            f"the BentoML model {tag} records no file digests (bundled before they were): run `bentoml build` again"
        )
    path = Path(stored.path) / PACKAGE
    integrity.verify(path, integrity.as_tags(digests), f"the BentoML model {tag}")
    return Source(path, {**metadata, "source": "bento", "bento_model": tag}, digests)


@attrs.frozen
class RegistryModel(ModelReference[Source]):
    """`name@alias` in the MLflow registry, frozen to one version when a Bento is built."""

    name: str
    alias: str

    @property
    def key(self) -> str:
        return f"{self.name}@{self.alias}"

    def _bundle(self):
        """Import the alias's current version into the BentoML model store (once per tag), verified: `bentoml build`
        fails with the IntegrityError of a version whose files differ from their registered digests."""
        version = champion_version(self.name, self.alias)
        with registry_package(self.name, self.alias, version) as source:
            tag = bento_tag(source.metadata)
            existing = self._stored(tag)
            if existing is not None:
                return existing
            labels = {
                "registered_model": self.name,
                "registry_version": source.metadata["version"],
                "alias": self.alias,
            }
            metadata = {**source.metadata, DIGESTS: source.digests}
            with bentoml.models.create(tag, labels=labels, metadata=metadata) as stored:
                shutil.copytree(source.path, Path(stored.path) / PACKAGE)
                bundled(stored, tag)  # the copy itself, before BentoML saves it
        return stored

    @staticmethod
    def _stored(tag: str):
        """The model already in the store under `tag` when it still verifies; a stale one (bundled before digests
        were recorded, or changed since) is deleted so the build imports the version again."""
        from bentoml.exceptions import NotFound

        try:
            stored = bentoml.models.get(tag)
        except NotFound:
            return None
        try:
            bundled(stored, tag)
        except PipelineError:
            bentoml.models.delete(tag)
            return None
        return stored

    def to_info(self, alias: str | None = None):
        from bentoml.models import BentoModel

        # bentoml build asks more than once; resolve the alias once so the Bento holds one version.
        if getattr(self, "_stored_model", None) is None:
            object.__setattr__(self, "_stored_model", self._bundle())
        return BentoModel(self._stored_model.tag).to_info(alias=self.key)  # the stored copy's info, under name@alias

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

    def resolve(self, base_path=None) -> Source | None:
        """A built Bento's verified copy. From the repository (registry mode) None: `bentoml serve` resolves every
        model in its own process before it starts the workers, and there a broken champion or an unreachable
        registry would stop it; the workers fetch, verify and fall back themselves (serving/hosting.py)."""
        from bentoml.models import BentoModel

        tag = self.bundled_tag()
        if base_path is not None:  # exporting a Bento: copy the bundled model beside it
            BentoModel(tag or self.to_info().tag).resolve(base_path)
        if tag is None:
            return None
        return bundled(bentoml.models.get(tag), tag)
