"""The task registry: one module per task, looked up by name. Nothing outside it branches on a task's name."""

from __future__ import annotations

from textops.tasks.base import Task


def _all() -> dict[str, Task]:
    from textops.tasks.sentiment import SentimentTask
    from textops.tasks.story import StoryTask

    return {t.name: t for t in (SentimentTask(), StoryTask())}


def names() -> list[str]:
    return sorted(_all())


def get(name: str) -> Task:
    tasks = _all()
    if name not in tasks:
        raise ValueError(f"unknown task '{name}'; known: {sorted(tasks)}")
    return tasks[name]
