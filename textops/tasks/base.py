"""The task interface: what differs between tasks, behind one small class.

Registry, promote, flows and serving look a task up by name (textops.tasks.get) and call these; the
mechanics they share (training, export, packaging, the registry's aliases and gate) are task-free.
Which stages belong to a task, its last stage and its frozen eval set are dvc.yaml's (textops.dag).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textops.params import Params


class Task:
    name: str  # the task's name in dvc.yaml (meta.task), on the CLI (--task) and in the flows (task_name)
    source_key: str  # the params key of its data source, as `dvc exp run -S <key>=...` takes it

    def params(self, params: Params) -> Any:
        """The task's params section: the one holding its tracking, package, promote and serve sections."""
        raise NotImplementedError

    def source(self, params: Params) -> str:
        return self.params(params).prepare.source

    def source_files(self, source: Path) -> list[Path]:
        """The files whose content is the data (the retrain flow hashes them to see whether it changed)."""
        raise NotImplementedError

    def flavour(self, package_dir: Path) -> tuple[Any, Any, Any, dict | None]:
        """For registration: the pyfunc's models-from-code file, an input example, the package's output for it,
        the params schema."""
        raise NotImplementedError

    def score(self, name: str, version: str, eval_path: Path) -> dict[str, float]:
        """A registered version's figure on the frozen eval set, from its verified package files
        (registry.fetch_package), loaded as serving loads them: no pickle, no code from the store."""
        raise NotImplementedError

    def decide(self, challenger: dict, champion: dict | None, promote: Any) -> list[str]:
        """Reasons to refuse the challenger (empty: promote). Pure: evidence and the task's promote params in."""
        raise NotImplementedError

    def headline(self, metrics: dict[str, dict]) -> list[tuple[str, Any]]:
        """The few figures a flow's report shows, from the task's metrics files keyed by their stem (evaluate)."""
        raise NotImplementedError

    def gate(self, name: str, eval_path: Path, params: Params, version: str | None = None) -> dict:
        """The registry gate: challenger (or `version`) against champion on the same frozen eval set."""
        from textops import registry

        return registry.judge(
            name,
            eval_path,
            lambda v: self.score(name, v, eval_path),
            lambda challenger, champion: self.decide(challenger, champion, self.params(params).promote),
            version,
        )
