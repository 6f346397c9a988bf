"""Serve the retraining deployment on its cron schedule (params orchestrate.cron), as a long-running process.

Needs a Prefect server (the ephemeral one cannot schedule):
    prefect server start --host 127.0.0.1            # terminal 1 (SQLite under ~/.prefect)
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m pipelines.serve                         # terminal 2: registers and serves each task's two deployments
    prefect deployment run pipeline/sentiment-pipeline  # a run by hand (retrain/sentiment-retrain runs on cron)
    prefect deployment run pipeline/story-pipeline
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect.schedules import Cron

from pipelines.flows import pipeline, retrain
from textops import tasks
from textops.params import OrchestrateParams, load_params


def schedule(settings: OrchestrateParams) -> Cron:
    return Cron(settings.cron, timezone=settings.timezone)


def deployment(repo: Path, task_name: str = "sentiment"):
    settings = load_params(repo / "params.yaml").orchestrate
    return retrain.to_deployment(
        name=f"{task_name}-retrain",
        schedule=schedule(settings),
        parameters={"task_name": task_name, "repo": str(repo)},
        description=f"Retrain {task_name} when its data changed; cron {settings.cron}",
        tags=[task_name, "dvc"],
    )


def on_demand(repo: Path, task_name: str = "sentiment"):
    """The pipeline flow without a schedule: for runs by hand (prefect deployment run pipeline/...)."""
    return pipeline.to_deployment(
        name=f"{task_name}-pipeline",
        parameters={"task_name": task_name, "repo": str(repo)},
        description=f"Run the {task_name} DAG now (DVC skips what is unchanged)",
        tags=[task_name, "dvc"],
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=Path("."))
    ap.add_argument("--task", choices=[*tasks.names(), "all"], default="all")
    args = ap.parse_args(argv)
    from prefect import serve

    repo = args.repo.resolve()
    chosen = tasks.names() if args.task == "all" else [args.task]
    serve(*[d for t in chosen for d in (deployment(repo, t), on_demand(repo, t))])


if __name__ == "__main__":
    main()
