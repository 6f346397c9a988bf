"""The stage graph and each task's part of it, read from dvc.yaml: nothing else declares them again."""

from __future__ import annotations

from graphlib import TopologicalSorter
from pathlib import Path

import yaml

from textops.errors import PipelineError


class DagError(PipelineError):
    """dvc.yaml lacks what was asked of it: a stage, a task's stages, its final stage or eval set."""


def _paths(entries: list) -> list[str]:
    """dvc.yaml lists a path as a string or as a one-key mapping {path: options}."""
    out = []
    for entry in entries or []:
        out.extend(entry.keys() if isinstance(entry, dict) else [entry])
    return [str(p).rstrip("/") for p in out]


def _under(path: str, out: str) -> bool:
    return path == out or path.startswith(out + "/")


def stage_graph(dvc_yaml: Path | str = "dvc.yaml") -> dict[str, set[str]]:
    """stage -> the stages whose outputs (outs, metrics, plots) it depends on."""
    stages = (yaml.safe_load(Path(dvc_yaml).read_text()) or {}).get("stages", {})
    produced = {
        name: _paths(s.get("outs")) + _paths(s.get("metrics")) + _paths(s.get("plots")) for name, s in stages.items()
    }
    return {
        name: {
            other
            for other, outs in produced.items()
            if other != name and any(_under(dep, out) for dep in _paths(s.get("deps")) for out in outs)
        }
        for name, s in stages.items()
    }


def stage_order(dvc_yaml: Path | str = "dvc.yaml", targets: list[str] | None = None) -> list[str]:
    """A topological order of the stages (only `targets` and what they need, when given)."""
    graph = stage_graph(dvc_yaml)
    if targets:
        unknown = sorted(set(targets) - set(graph))
        if unknown:
            raise DagError(f"unknown stage(s) {unknown}; dvc.yaml has {sorted(graph)}")
        keep, todo = set(), list(targets)
        while todo:
            stage = todo.pop()
            if stage not in keep:
                keep.add(stage)
                todo.extend(graph[stage])
        graph = {k: v & keep for k, v in graph.items() if k in keep}
    return list(TopologicalSorter(graph).static_order())


# ---------------------------------------------------------------- each task's part of the graph
# A stage says which task it belongs to in dvc.yaml's free-form `meta` (ignored by DVC); the task's last
# stage also carries `final: true` and `eval_set`, the frozen eval set its registry gate scores on.


def _stages(dvc_yaml: Path | str) -> dict[str, dict]:
    path = Path(dvc_yaml)
    if not path.is_file():
        raise DagError(f"{path} not found: run from the repository root (or pass the repository)")
    return (yaml.safe_load(path.read_text()) or {}).get("stages", {})


def task_stages(dvc_yaml: Path | str, task: str) -> dict[str, dict]:
    """The stages whose meta.task is `task`, in dvc.yaml's order."""
    found = {name: s for name, s in _stages(dvc_yaml).items() if (s.get("meta") or {}).get("task") == task}
    if not found:
        raise DagError(f"{dvc_yaml} has no stage with meta.task '{task}'")
    return found


def final_stage(dvc_yaml: Path | str, task: str) -> str:
    """The task's last stage (meta.final), which the flows run with everything it needs."""
    finals = [name for name, s in task_stages(dvc_yaml, task).items() if s["meta"].get("final")]
    if len(finals) != 1:
        raise DagError(f"{dvc_yaml}: task '{task}' needs exactly one stage with meta.final: true, found {finals}")
    return finals[0]


def eval_set(dvc_yaml: Path | str, task: str) -> Path:
    """The frozen eval set of the task's registry gate (meta.eval_set of its final stage), relative to the repo."""
    stage = task_stages(dvc_yaml, task)[final_stage(dvc_yaml, task)]
    if "eval_set" not in stage["meta"]:
        raise DagError(f"{dvc_yaml}: the final stage of task '{task}' has no meta.eval_set")
    return Path(dvc_yaml).parent / stage["meta"]["eval_set"]


def metrics_files(dvc_yaml: Path | str, task: str) -> dict[str, str]:
    """stage -> its metrics file (the first one dvc.yaml declares), for the task's stages that have one."""
    return {name: _paths(s["metrics"])[0] for name, s in task_stages(dvc_yaml, task).items() if s.get("metrics")}
