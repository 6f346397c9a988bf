"""Load test: the Bento service against a naive baseline, under the same loads, side by side.

Starts each server on loopback in turn (never both at once: they share the 2 cores), drives it with
  closed-1    one client, next request when the last returns (single-request latency)
  closed-N    N clients the same way (throughput at concurrency N)
  fixed-rate  requests at a constant rate, half the service's closed-N throughput, for --duration
              seconds; latency counts from the scheduled send time, so a stalled server is not hidden
and prints throughput, p50/p95/p99 latency and errors, and each Bento worker's share of the CPU in the
closed-N run (the workers share one socket; a burst of new connections can all land on one). The client
runs on the same 2 cores.

With --swap-to V (registry mode only), the service gets a second fixed-rate run during which
`champion` moves to version V a quarter of the way in (and back afterwards); /metadata is polled
to time the switch.

Run after `dvc repro` and `python -m textops.promote gate`:
    python -m bench.serving.load_test [--duration 120] [--concurrency 32] [--swap-to 2]
        [--out bench/results/load_test.md]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench import ROOT
from serving.processes import free_port
from serving.processes import stop_process as stop  # BentoML's workers leave the group: stopped one by one

SST2_DEV = ROOT.parent / "shared" / "data" / "sst2" / "dev.tsv"
SAMPLE = ROOT / "data" / "sample" / "sentiment.tsv"
ENV = {
    "BENTOML_DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
}


def load_texts() -> list[str]:
    path = SST2_DEV if SST2_DEV.is_file() else SAMPLE
    with path.open(encoding="utf-8") as f:
        return [row["sentence"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


def start(cmd: list[str], port: int, log: Path, env: dict, ready: str = "/readyz") -> subprocess.Popen:
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, **ENV, **env},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    import urllib.request

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{cmd[0]} exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready}", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.5)
    stop(proc)
    sys.exit(f"{cmd[0]} not ready on port {port} within 180 s; see {log}")


class Recorder:
    def __init__(self):
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.start = self.end = 0.0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def summary(self) -> dict:
        lat = np.array(self.latencies) * 1000
        q = np.percentile(lat, [50, 95, 99]) if len(lat) else [float("nan")] * 3
        return {
            "ok": len(lat),
            "errors": sum(self.errors.values()),
            "error_kinds": dict(self.errors),
            "throughput": len(lat) / (self.end - self.start),
            "p50": q[0],
            "p95": q[1],
            "p99": q[2],
        }


async def send(session, url: str, body: dict, since: float, rec: Recorder) -> None:
    import aiohttp

    try:
        async with session.post(url, json=body) as response:
            await response.read()
            if response.status == 200:
                rec.latencies.append(time.perf_counter() - since)
            else:
                rec.error(f"http {response.status}")
    except (TimeoutError, aiohttp.ClientError) as error:
        rec.error(type(error).__name__)


def session(limit: int):
    import aiohttp

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit), timeout=aiohttp.ClientTimeout(total=10))


async def closed_loop(url: str, bodies: list[dict], concurrency: int, duration: float) -> Recorder:
    rec, counter = Recorder(), iter(range(10**9))
    async with session(concurrency) as s:
        rec.start = time.perf_counter()
        stop_at = rec.start + duration

        async def client():
            while time.perf_counter() < stop_at:
                await send(s, url, bodies[next(counter) % len(bodies)], time.perf_counter(), rec)

        await asyncio.gather(*(client() for _ in range(concurrency)))
        rec.end = time.perf_counter()
    return rec


async def fixed_rate(url: str, bodies: list[dict], rate: float, duration: float, during=None) -> Recorder:
    rec, tasks = Recorder(), []
    async with session(1024) as s:
        side = asyncio.create_task(during(s)) if during else None
        rec.start = time.perf_counter()
        for i in range(int(rate * duration)):
            due = rec.start + i / rate
            if (delay := due - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(s, url, bodies[i % len(bodies)], due, rec)))
        await asyncio.gather(*tasks)
        rec.end = time.perf_counter()
        swap = await side if side else None
    rec.swap = swap
    return rec


def swap_watch(base: str, version: str, at: float):
    """Move champion to `version` after `at` seconds; time until /metadata reports it.

    The promotion runs as its own process (`python -m textops.promote promote --force`), as the gate, the
    CLI or the MLflow UI would. Run inside this process, MLflow's import and queries held the event loop,
    the schedule fell behind, and the overdue requests went out as one burst that the service shed (503)."""

    async def run(s) -> dict:
        await asyncio.sleep(at)
        async with s.get(f"{base}/metadata") as r:
            before = (await r.json())["version"]
        promote = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "textops.promote",
            "promote",
            "--version",
            str(version),
            "--force",
            "--reason",
            "bench.serving.load_test: hot swap under load",
            cwd=ROOT,
            env={**os.environ, **ENV},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await promote.communicate()
        if promote.returncode != 0:
            return {
                "from": before,
                "to": version,
                "seconds_to_switch": None,
                "error": err.decode(errors="replace")[-500:],
            }
        moved, seen = time.perf_counter(), None  # from the alias move, as the poll interval counts
        while seen is None and time.perf_counter() - moved < 120:
            async with s.get(f"{base}/metadata") as r:
                if (await r.json())["version"] == str(version):
                    seen = time.perf_counter() - moved
            await asyncio.sleep(0.25)
        return {"from": before, "to": version, "seconds_to_switch": seen}

    return run


def worker_cpu(server: subprocess.Popen) -> dict[int, float]:
    """CPU seconds so far of each BentoML worker process under `server`."""
    import psutil

    workers = [p for p in psutil.Process(server.pid).children(recursive=True) if "--worker-id" in p.cmdline()]
    return {p.pid: sum(p.cpu_times()[:2]) for p in workers}


def drive(
    name: str,
    base: str,
    body_key: str,
    texts: list[str],
    args,
    rate: float | None,
    during=None,
    server: subprocess.Popen | None = None,
):
    bodies = [{body_key: t} for t in texts]
    url = f"{base}/classify"
    asyncio.run(closed_loop(url, bodies, args.concurrency, 5))  # warm-up, not reported
    rows = {"closed-1": asyncio.run(closed_loop(url, bodies, 1, args.closed_duration))}
    before = worker_cpu(server) if server else {}
    rows[f"closed-{args.concurrency}"] = asyncio.run(closed_loop(url, bodies, args.concurrency, args.closed_duration))
    if before:  # the workers share one listening socket: a burst of new connections can land on one of them
        after = worker_cpu(server)
        used = [after[pid] - before[pid] for pid in before if pid in after]
        rows[f"closed-{args.concurrency}"].cpu_split = [round(u / sum(used), 2) for u in used]
    rate = rate or rows[f"closed-{args.concurrency}"].summary()["throughput"] / 2
    rows[f"fixed-{rate:.0f}/s"] = asyncio.run(fixed_rate(url, bodies, rate, args.duration))
    if during:  # a run of its own: loading the new version takes CPU from serving for a few seconds
        rows[f"fixed-{rate:.0f}/s, hot swap"] = asyncio.run(fixed_rate(url, bodies, rate, args.duration, during))
    return rows, rate


def table(results: dict) -> str:
    lines = ["| server | load | req/s | p50 ms | p95 ms | p99 ms | ok | errors |", "|---|---|---|---|---|---|---|---|"]
    for server, rows in results.items():
        for load, rec in rows.items():
            s = rec.summary()
            kinds = f" {s['error_kinds']}" if s["errors"] else ""
            lines.append(
                f"| {server} | {load} | {s['throughput']:.1f} | {s['p50']:.1f} | {s['p95']:.1f} | "
                f"{s['p99']:.1f} | {s['ok']} | {s['errors']}{kinds} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=120, help="seconds of the fixed-rate run")
    parser.add_argument("--closed-duration", type=float, default=30, help="seconds of each closed-loop run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--bento", help="serve this built Bento (e.g. sentiment:latest) instead of registry mode")
    parser.add_argument("--swap-to", help="registry version to move champion to during the fixed-rate run")
    parser.add_argument("--naive-model", default="outputs/sentiment/model", help="FP32 folder for the baseline")
    parser.add_argument("--skip-naive", action="store_true", help="measure the service only")
    parser.add_argument("--out", type=Path, help="also write the report here (Markdown)")
    args = parser.parse_args()
    if args.swap_to and args.bento:
        sys.exit("--swap-to needs registry mode (a built Bento serves its bundled version): drop --bento")

    import tempfile

    from textops.params import load_params

    texts, params = load_texts(), load_params(ROOT / "params.yaml")
    logs = Path(tempfile.mkdtemp(prefix="load_test_"))  # server logs, named in any error message
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = ["bentoml", "serve", *([args.bento] if args.bento else []), "--host", "127.0.0.1", "--port", str(port)]
    during = swap_watch(base, args.swap_to, args.duration / 4) if args.swap_to else None
    proc = start(
        cmd,
        port,
        logs / "load_test_bento.log",
        {"BENTOML_HOME": os.environ.get("BENTOML_HOME", str(ROOT / "bento_home"))},
    )
    try:
        import json
        import urllib.request

        with urllib.request.urlopen(f"{base}/metadata", timeout=5) as r:
            served = json.loads(r.read())
        bento_rows, rate = drive("bento", base, "texts", texts, args, None, during, server=proc)
    finally:
        stop(proc)
        if args.swap_to and (restore := served.get("version")):
            from textops import registry
            from textops.tracking import connect

            connect()
            registry.force(
                params.sentiment.package.model_name, restore, "bench.serving.load_test: restore after hot swap"
            )
    if args.skip_naive:
        print(f"batch_wait={params.sentiment.serve.batch_wait}\n{table({'bento (INT8, batched)': bento_rows})}")
        return
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.serving.naive_service:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        port,
        logs / "load_test_naive.log",
        {"NAIVE_MODEL": args.naive_model},
        ready="/docs",
    )  # FastAPI's own page: no readiness probe
    try:
        naive_rows, _ = drive("naive", base, "text", texts, args, rate)
    finally:
        stop(proc)
    report(args, served, texts, {"bento (INT8, batched)": bento_rows, "naive (FP32, FastAPI)": naive_rows})


def report(args, served: dict, texts: list[str], results: dict) -> None:
    c = f"closed-{args.concurrency}"
    bento, naive = (list(rows.values()) for rows in results.values())
    ratio = bento[1].summary()["throughput"] / naive[1].summary()["throughput"]
    lines = [
        f"# Load test, {time.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"Command: `python -m bench.serving.load_test {' '.join(sys.argv[1:])}`",
        "",
        f"Served: {served.get('name')} v{served.get('version')} ({served.get('mode')} mode); "
        f"{len(texts)} texts ({'SST-2 dev' if SST2_DEV.is_file() else 'bundled sample'}), one per request, "
        f"in a fixed order. Client and server share the machine's {os.cpu_count()} cores.",
        "",
        table(results),
        "",
        f"Throughput ratio at {c}: {ratio:.2f}x",
    ]
    split = getattr(bento[1], "cpu_split", None)
    if split:
        lines.append(f"Bento workers' shares of the service's CPU during {c}: {' / '.join(f'{x:.0%}' for x in split)}")
    swap = getattr(bento[-1], "swap", None)
    if swap:
        seen = swap["seconds_to_switch"]
        seen = f"{seen:.1f} s after the move" if seen is not None else "never (within 120 s)"
        if swap.get("error"):
            seen = f"never: the promotion failed ({swap['error']})"
        lines.append(
            f"Hot swap during the fixed-rate run: champion v{swap['from']} -> v{swap['to']}; /metadata "
            f"showed v{swap['to']} {seen}; errors in that run: {bento[-1].summary()['errors']}"
        )
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
