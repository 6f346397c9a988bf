"""How long an alias move takes to reach a running service when the MLflow server pushes it (its webhook), with the
service's poll set to 60 s so that only the push can explain a fast swap (issue 17).

Needs the team stack and two versions of the model on its server:
    bash scripts/stack.sh up mlflow && eval "$(bash scripts/stack.sh env)"
    dvc repro sentiment_package && dvc repro -f -s sentiment_package     # v1 and v2 on the server
    python -m bench.serving.webhook_latency --moves 10
Serves from a copy of the repository whose params.yaml polls every 60 s; moves champion between the two newest
versions `--moves` times (textops.registry.force) and times each until /metadata names the new version.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from serving.processes import free_port, stop_process

ROOT = Path(__file__).resolve().parents[2]


def copy_code(dest: Path, poll_interval_s: float) -> None:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if name.startswith(("serving/", "textops/", "params.yaml", "bentofile")):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["sentiment"]["serve"]["poll_interval_s"] = poll_interval_s
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def version(url: str) -> str | None:
    try:
        return str(httpx.get(f"{url}/metadata", timeout=5).json().get("version"))
    except (httpx.HTTPError, ValueError):
        return None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moves", type=int, default=10)
    ap.add_argument("--poll-interval-s", type=float, default=60.0)
    ap.add_argument("--log", type=Path, help="keep the service's log here")
    args = ap.parse_args(argv)
    if not os.environ.get("MLFLOW_TRACKING_URI", "").startswith("http"):
        sys.exit('set MLFLOW_TRACKING_URI to the stack\'s server: eval "$(bash scripts/stack.sh env)"')
    from textops import registry
    from textops.params import load_params
    from textops.tracking import connect

    connect()
    name = load_params(ROOT / "params.yaml").sentiment.package.model_name
    versions = sorted((int(v.version) for v in registry.client().search_model_versions(f"name='{name}'")), reverse=True)
    if len(versions) < 2:
        sys.exit(f"{name} has {len(versions)} version(s) on the server; the docstring says how to make two")
    pair = [str(v) for v in versions[:2]]
    registry.force(name, pair[0], "webhook bench: start")
    port = free_port()
    with tempfile.TemporaryDirectory() as scratch:
        code = Path(scratch)
        copy_code(code, args.poll_interval_s)
        env = {
            **os.environ,
            "BENTOML_HOME": str(code / "bentoml"),
            "TEXTOPS_WEBHOOK_URL": f"http://127.0.0.1:{port}/registry_events",
            "TEXTOPS_WEBHOOK_SECRET": "bench-secret",
        }
        log = code / "serve.log"
        with log.open("w") as out:
            cmd = [str(Path(sys.executable).with_name("bentoml")), "serve", "serving.service:Sentiment"]
            proc = subprocess.Popen(
                [*cmd, "--port", str(port)],
                cwd=code,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while version(url) != pair[0] or "subscribed to" not in log.read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit("the service did not start or subscribe:\n" + log.read_text()[-3000:])
                time.sleep(0.2)
            seconds = []
            for i in range(args.moves):
                target = pair[(i + 1) % 2]
                registry.force(name, target, f"webhook bench: move {i + 1}")
                moved = time.monotonic()
                while version(url) != target:
                    if time.monotonic() - moved > 2 * args.poll_interval_s:
                        sys.exit(f"move {i + 1} never arrived:\n" + log.read_text()[-3000:])
                    time.sleep(0.02)
                seconds.append(time.monotonic() - moved)
                time.sleep(1.0)
        finally:
            stop_process(proc)
            if args.log:
                shutil.copy2(log, args.log)
    print(
        f"alias move -> service swap, pushed by the MLflow server's webhook (poll every {args.poll_interval_s:.0f} s)"
    )
    print(
        f"moves {len(seconds)}  median {statistics.median(seconds):.2f} s  min {min(seconds):.2f} s  max {max(seconds):.2f} s"
    )
    print("each: " + " ".join(f"{s:.2f}" for s in seconds))


if __name__ == "__main__":
    main()
