"""Put each task's deployments (pipelines/serve.py's, the same names and schedule) on a process work pool, for
`prefect worker start` to run: the team set-up, against a local server, a remote one or Prefect Cloud alike
(whichever PREFECT_API_URL names).

    python -m pipelines.deploy --pool textops        # once, and again after params.yaml's orchestrate changes
    prefect worker start --pool textops              # on the machine that holds this workspace (scripts/stack.sh up worker)
    prefect deployment run pipeline/sentiment-pipeline

A worker runs each flow run in a child process in this workspace. Runs of one workspace go through its own work
queue, limited to one at a time by Prefect (a run that comes while one is active waits, Scheduled, until it ends):
DVC allows one `dvc repro` per workspace. The flows' workspace lock (docs/orchestration.md) still holds for runs
started elsewhere. Queued DVC experiments run in parallel in their own copies (`dvc queue start -j 2`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pipelines.serve import ENTRYPOINTS, arguments, chosen, specs


def queue_name(repo: Path) -> str:
    """One work queue per workspace: its folder's name and a hash of its path, stable across deploys."""
    return f"{repo.name}-{hashlib.sha256(str(repo).encode()).hexdigest()[:8]}"


def ensure_pool(pool: str, queue: str, concurrency: int) -> None:
    """The process work pool (made if missing) and the workspace's queue, limited to `concurrency` runs."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        except ObjectAlreadyExists:
            pass
        try:
            found = client.read_work_queue_by_name(queue, work_pool_name=pool)
        except ObjectNotFound:
            found = client.create_work_queue(name=queue, work_pool_name=pool)
        client.update_work_queue(found.id, concurrency_limit=concurrency)


def deploy(repo: Path, pool: str, task_names: list[str], concurrency: int = 1, schedule=None) -> dict[str, str]:
    """Each task's deployments on `pool`; `schedule` (a prefect.schedules.Schedule) replaces orchestrate.cron's on
    the scheduled ones, e.g. for a trial. Returns {deployment name: id}."""
    from prefect import Flow

    repo = repo.resolve()
    queue = queue_name(repo)
    ensure_pool(pool, queue, concurrency)
    made = {}
    for task_name in task_names:
        for flow, kwargs in specs(repo, task_name):
            if schedule is not None and "schedule" in kwargs:
                kwargs = {**kwargs, "schedule": schedule}
            source = Flow.from_source(str(repo), ENTRYPOINTS[flow.name])
            made[kwargs["name"]] = str(
                source.deploy(
                    **kwargs,
                    work_pool_name=pool,
                    work_queue_name=queue,
                    build=False,
                    push=False,
                    print_next_steps=False,
                    ignore_warnings=True,  # "a process pool runs flows where the worker is": that is the point here
                )
            )
    return made


def main(argv=None) -> None:
    ap = arguments(__doc__)
    ap.add_argument("--pool", default="textops", help="a process work pool (made if missing)")
    ap.add_argument("--concurrency", type=int, default=1, help="runs of this workspace at once")
    args = ap.parse_args(argv)
    for name, deployment_id in deploy(args.repo, args.pool, chosen(args.task), args.concurrency).items():
        print(f"deployed {name} ({deployment_id}) on work pool {args.pool}, queue {queue_name(args.repo.resolve())}")


if __name__ == "__main__":
    main()
