"""Soak test: the Bento service held at 80 % of its measured throughput for ten minutes, watched minute by minute.

  probe    --concurrency clients in a closed loop for --probe-seconds (after a 5 s warm-up): the max throughput
  hold     requests at --load (0.8) times that rate, sent on a fixed schedule for --seconds (600) over at most
           --connections (the probe's --concurrency) connections, as a proxy's connection pool in front of the
           service would; a request waits for a free connection, and its latency counts from its scheduled send
           time, so a stalling server is not hidden
and prints, per --every seconds (60): requests answered, errors, p50/p99 latency, and the service processes' (the
`bentoml serve` arbiter and its workers) summed RSS and open file descriptors. RSS and descriptors are also taken
with the service idle, before the hold and after it (KEEPALIVE_S after the clients' connections closed, so
descriptors count no leftover connection). At the end: total errors, RSS growth, descriptor change. Exit status 1
when there was an error, RSS grew by --max-rss-growth (10) % or more, or descriptors grew.

Run after `dvc repro` and `python -m textops.promote gate` (registry mode), or on a built Bento:
    python -m bench.serving.soak [--seconds 600] [--bento sentiment:latest] [--out bench/results/soak.md]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import ROOT
from bench.serving.load_test import Recorder, closed_loop, load_texts, session, start
from serving.processes import free_port
from serving.processes import stop_process as stop

KEEPALIVE_S = 7  # uvicorn closes an idle keep-alive connection after 5 s; then the descriptor counts are comparable


def usage(server: subprocess.Popen) -> tuple[float, int]:
    """Summed RSS (MB) and open file descriptors of the server process and every process under it."""
    import psutil

    root = psutil.Process(server.pid)
    rss, fds = 0, 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            rss += proc.memory_info().rss
            fds += proc.num_fds()
        except psutil.NoSuchProcess:  # a process that ended between the listing and the reading
            pass
    return rss / 2**20, fds


class Windows:
    """Requests by the window they finished in; the current one is closed every `every` seconds."""

    def __init__(self):
        self.current, self.closed = Recorder(), []

    def close(self, server: subprocess.Popen) -> dict:
        rec, self.current = self.current, Recorder()
        lat = np.array(rec.latencies) * 1000
        p50, p99 = np.percentile(lat, [50, 99]) if len(lat) else (float("nan"), float("nan"))
        rss, fds = usage(server)
        row = {"requests": len(lat) + sum(rec.errors.values()), "errors": dict(rec.errors), "p50": p50, "p99": p99}
        self.closed.append({**row, "rss_mb": rss, "fds": fds})
        return self.closed[-1]


async def send(s, url: str, body: dict, due: float, windows: Windows) -> None:
    import aiohttp

    try:
        async with s.post(url, json=body) as response:
            text = (await response.read()).decode(errors="replace")
            if response.status == 200:
                windows.current.latencies.append(time.perf_counter() - due)
            else:  # the first words tell the cap's 503 ("busy: ...") from the batcher's ("process is overloaded")
                windows.current.error(f"http {response.status} {text[:30]}")
    except (TimeoutError, aiohttp.ClientError) as error:
        windows.current.error(type(error).__name__)


async def hold(
    url: str, bodies: list[dict], rate: float, seconds: float, every: float, server, connections: int
) -> list[dict]:
    """Requests at `rate`/s on a fixed schedule for `seconds`; a row per `every` seconds, printed as it closes.

    Over at most `connections` connections: with one per request in flight, a queue that builds on this 2-core
    machine (client and server share it) opened hundreds of connections, whose handling took the CPU the
    workers needed, and the queue grew for good (p50 13 -> 746 ms in 90 s at 80 %, fds 215 -> 587)."""
    windows, tasks = Windows(), set()
    async with session(connections) as s:
        began = time.perf_counter()
        report_at, i = began + every, 0
        while (due := began + i / rate) < began + seconds:
            if due >= report_at:
                print_row(len(windows.closed) + 1, windows.close(server))
                report_at += every
            if (delay := due - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(send(s, url, bodies[i % len(bodies)], due, windows))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.gather(*tasks)
        print_row(len(windows.closed) + 1, windows.close(server))
    return windows.closed


HEADER = "| window | requests | errors | p50 ms | p99 ms | RSS MB | fds |\n|---|---|---|---|---|---|---|"


def row_text(n: int, row: dict) -> str:
    errors = sum(row["errors"].values())
    kinds = f" {row['errors']}" if errors else ""
    return (
        f"| {n} | {row['requests']} | {errors}{kinds} | {row['p50']:.1f} | {row['p99']:.1f} | "
        f"{row['rss_mb']:.0f} | {row['fds']} |"
    )


def print_row(n: int, row: dict) -> None:
    print(row_text(n, row), flush=True)


def verdict(rows: list[dict], idle: dict, max_rss_growth: float) -> tuple[list[str], list[str]]:
    """The summary lines, and the reasons to fail (none: passed)."""
    errors = sum(sum(r["errors"].values()) for r in rows)
    growth = 100 * (idle["after"][0] - idle["before"][0]) / idle["before"][0]
    fd_change = idle["after"][1] - idle["before"][1]
    lines = [
        f"Total: {sum(r['requests'] for r in rows)} requests, {errors} errors",
        f"Idle RSS: {idle['before'][0]:.0f} MB before the hold, {idle['after'][0]:.0f} MB after: {growth:+.1f} %",
        f"Idle open file descriptors: {idle['before'][1]} before, {idle['after'][1]} after: {fd_change:+d}",
    ]
    failures = []
    if errors:
        failures.append(f"{errors} errors")
    if growth >= max_rss_growth:
        failures.append(f"RSS grew {growth:.1f} % (limit {max_rss_growth} %)")
    if fd_change > 0:
        failures.append(f"{fd_change} more open file descriptors")
    return lines, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=600, help="length of the hold at --load of max throughput")
    parser.add_argument("--load", type=float, default=0.8, help="share of the probed max throughput to hold")
    parser.add_argument("--every", type=float, default=60, help="seconds per reported window")
    parser.add_argument("--probe-seconds", type=float, default=20, help="closed-loop run that measures max throughput")
    parser.add_argument("--concurrency", type=int, default=32, help="clients of the probe")
    parser.add_argument("--connections", type=int, help="connections of the hold (default: --concurrency)")
    parser.add_argument("--max-rss-growth", type=float, default=10.0, help="percent of idle RSS growth that fails")
    parser.add_argument("--bento", help="serve this built Bento (e.g. sentiment:latest) instead of registry mode")
    parser.add_argument("--out", type=Path, help="also write the report here (Markdown)")
    args = parser.parse_args()
    args.connections = args.connections or args.concurrency

    texts = load_texts()
    bodies = [{"texts": t} for t in texts]
    logs = Path(tempfile.mkdtemp(prefix="soak_"))  # the server log, named in any error message
    port = free_port()
    url = f"http://127.0.0.1:{port}/classify"
    cmd = ["bentoml", "serve", *([args.bento] if args.bento else []), "--host", "127.0.0.1", "--port", str(port)]
    home = {"BENTOML_HOME": os.environ.get("BENTOML_HOME", str(ROOT / "bento_home"))}
    server = start(cmd, port, logs / "soak_bento.log", home)
    try:
        asyncio.run(closed_loop(url, bodies, args.concurrency, 5))  # warm-up, not reported
        probe = asyncio.run(closed_loop(url, bodies, args.concurrency, args.probe_seconds)).summary()
        rate = args.load * probe["throughput"]
        print(
            f"Probe: {probe['throughput']:.1f} req/s at {args.concurrency} clients ({probe['errors']} errors); "
            f"holding {rate:.1f} req/s ({args.load:.0%}) for {args.seconds:.0f} s. Server log: {logs}\n\n{HEADER}",
            flush=True,
        )
        time.sleep(KEEPALIVE_S)
        idle = {"before": usage(server)}
        rows = asyncio.run(hold(url, bodies, rate, args.seconds, args.every, server, args.connections))
        time.sleep(KEEPALIVE_S)
        idle["after"] = usage(server)
    finally:
        stop(server)
    lines, failures = verdict(rows, idle, args.max_rss_growth)
    result = "FAILED: " + "; ".join(failures) if failures else "passed"
    print("\n" + "\n".join(lines) + f"\nSoak {result}")
    if args.out:
        report = [
            f"# Soak test, {time.strftime('%Y-%m-%d %H:%M')}",
            "",
            f"Command: `python -m bench.serving.soak {' '.join(sys.argv[1:])}`",
            "",
            f"Probe: {probe['throughput']:.1f} req/s at {args.concurrency} clients; held {rate:.1f} req/s "
            f"({args.load:.0%}) for {args.seconds:.0f} s over at most {args.connections} "
            f"connections, {len(texts)} texts one per request. Client and server "
            f"share the machine's {os.cpu_count()} cores.",
            "",
            HEADER,
            *(row_text(n, row) for n, row in enumerate(rows, 1)),
            "",
            *lines,
            f"Soak {result}",
        ]
        args.out.write_text("\n".join(report) + "\n", encoding="utf-8")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
