"""The stage graph, read from dvc.yaml: the flows never declare it again."""
from __future__ import annotations

from graphlib import TopologicalSorter
from pathlib import Path

import yaml


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
    produced = {name: _paths(s.get("outs")) + _paths(s.get("metrics")) + _paths(s.get("plots"))
                for name, s in stages.items()}
    return {name: {other for other, outs in produced.items() if other != name
                   and any(_under(dep, out) for dep in _paths(s.get("deps")) for out in outs)}
            for name, s in stages.items()}


def stage_order(dvc_yaml: Path | str = "dvc.yaml", targets: list[str] | None = None) -> list[str]:
    """A topological order of the stages (only `targets` and what they need, when given)."""
    graph = stage_graph(dvc_yaml)
    if targets:
        unknown = sorted(set(targets) - set(graph))
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; dvc.yaml has {sorted(graph)}")
        keep, todo = set(), list(targets)
        while todo:
            stage = todo.pop()
            if stage not in keep:
                keep.add(stage)
                todo.extend(graph[stage])
        graph = {k: v & keep for k, v in graph.items() if k in keep}
    return list(TopologicalSorter(graph).static_order())
