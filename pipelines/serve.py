"""Each task's two deployments, declared once: served by this process (`python -m pipelines.serve`), or put on a
work pool for workers (`python -m pipelines.deploy`, pipelines/deploy.py).

Serving needs a Prefect server (the ephemeral one cannot schedule):
    prefect server start --host 127.0.0.1            # terminal 1 (SQLite under ~/.prefect)
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m pipelines.serve                         # terminal 2: registers and serves each task's two deployments
    prefect deployment run pipeline/sentiment-pipeline  # a run by hand (retrain/sentiment-retrain runs on cron)
    prefect deployment run pipeline/story-pipeline
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prefect import Flow
from prefect.schedules import Cron

from pipelines.flows import pipeline, retrain
from textops import tasks
from textops.params import OrchestrateParams, load_params

# Where a worker finds each flow in the repository (Flow.from_source).
ENTRYPOINTS = {"pipeline": "pipelines/flows.py:pipeline", "retrain": "pipelines/flows.py:retrain"}


def schedule(settings: OrchestrateParams) -> Cron:
    return Cron(settings.cron, timezone=settings.timezone)


def specs(repo: Path, task_name: str = "sentiment") -> list[tuple[Flow, dict[str, Any]]]:
    """The task's deployments as (flow, keyword arguments of to_deployment/deploy): `<task>-retrain` on
    orchestrate.cron, and `<task>-pipeline` without a schedule, for runs by hand."""
    settings = load_params(repo / "params.yaml").orchestrate
    parameters = {"task_name": task_name, "repo": str(repo)}
    return [
        (
            retrain,
            {
                "name": f"{task_name}-retrain",
                "schedule": schedule(settings),
                "parameters": parameters,
                "description": f"Retrain {task_name} when its data changed; cron {settings.cron}",
                "tags": [task_name, "dvc"],
            },
        ),
        (
            pipeline,
            {
                "name": f"{task_name}-pipeline",
                "parameters": parameters,
                "description": f"Run the {task_name} DAG now (DVC skips what is unchanged)",
                "tags": [task_name, "dvc"],
            },
        ),
    ]


def deployment(repo: Path, task_name: str = "sentiment"):
    """The scheduled retraining deployment, to serve."""
    flow, kwargs = specs(repo, task_name)[0]
    return flow.to_deployment(**kwargs)


def chosen(task: str) -> list[str]:
    return tasks.names() if task == "all" else [task]


def arguments(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=Path("."))
    ap.add_argument("--task", choices=[*tasks.names(), "all"], default="all")
    return ap


def main(argv=None) -> None:
    args = arguments(__doc__).parse_args(argv)
    from prefect import serve

    repo = args.repo.resolve()
    serve(*[flow.to_deployment(**kw) for t in chosen(args.task) for flow, kw in specs(repo, t)])


if __name__ == "__main__":
    main()
