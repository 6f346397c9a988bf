"""Promotion gate and alias moves for a registered model.

  python -m textops.promote gate                     # challenger vs champion on the frozen eval set
  python -m textops.promote promote --version 3 --force --reason "hotfix approved by X"
  python -m textops.promote rollback [--reason ...]  # champion back to previous
  python -m textops.promote status                   # aliases and the audit log
  python -m textops.promote gate --task story        # the story generator: lower perplexity wins

Exit code 0 when the gate promotes (or nothing changes), 2 when it refuses, 1 on an error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from textops import dag, registry, tasks
from textops.errors import PipelineError
from textops.params import load_params
from textops.tracking import configure


def status(name: str) -> dict:
    registry.notice_hand_moves(name)  # so the log shown includes moves made in the MLflow UI
    aliases = {}
    for alias in (registry.CHAMPION, registry.CHALLENGER, registry.PREVIOUS):
        try:
            aliases[alias] = registry.version_of(name, alias)
        except registry.RegistryError as error:
            aliases[alias] = f"ERROR: {error}"
    return {"model": name, "aliases": aliases, "audit": registry.audit_log(name)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["gate", "promote", "rollback", "status"])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--task", choices=tasks.names(), default="sentiment", help="which model (default sentiment)")
    ap.add_argument(
        "--eval",
        type=Path,
        help="frozen eval set (default: meta.eval_set of the task's final stage in dvc.yaml, beside --params)",
    )
    ap.add_argument("--version", help="a version number (gate: instead of the challenger; promote: required)")
    ap.add_argument("--force", action="store_true", help="promote: skip the gate (needs --reason)")
    ap.add_argument("--reason", default="", help="why: written into the audit log")
    args = ap.parse_args(argv)
    try:
        params = load_params(args.params)
        task = tasks.get(args.task)
        section = task.params(params)
        configure(section.tracking.experiment)
        name = section.package.model_name
        if args.command == "gate":
            eval_path = args.eval or dag.eval_set(Path(args.params).parent / "dvc.yaml", task.name)
            result = task.gate(name, eval_path, params, args.version)
        elif args.command == "promote":
            if not (args.force and args.version):
                raise PipelineError(
                    'promote needs --version N --force --reason "..." (use `gate` for the checked path)'
                )
            result = registry.force(name, args.version, args.reason)
        elif args.command == "rollback":
            result = registry.rollback(name, args.reason or "rollback")
        else:
            result = status(name)
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, default=str))
    if result.get("decision") == "refused":
        print(f"gate refused v{result['version']}:\n  - " + "\n  - ".join(result["reasons"]), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
