"""Load test of the story service's stream: time to first token and tokens/s at several concurrencies.

Starts `bentoml serve serving.story:StoryGenerator` from the repository on loopback (registry mode:
`story-generator@champion` of the workspace store, or of MLFLOW_TRACKING_URI), or a built Bento
(--bento story:latest), then for each level N runs a closed loop for --duration seconds: N clients,
each sending POST /generate_stream with the next prompt of `story.evaluate.prompts` and a new seed,
reading it to the end, then sending the next. Per stream: time to first chunk (TTFT, from the send),
and decode tokens/s after the first chunk; per level: aggregate tokens/s and errors. Tokens are
counted by re-encoding the streamed text with the served package's tokenizer (a byte-level BPE
re-encodes its own output to about the same count). Decoding uses the service's defaults
(`story.serve.defaults`); workers and ONNX threads come from params.yaml. The client shares the cores.

The issue's target: first token within 100 ms (p50) on CPU for the default model.

Run after `dvc repro story_package` and `python -m textops.promote gate --task story`:
    python -m bench.serving.story_load_test [--levels 1 4 16] [--duration 30] [--out bench/results/story_load_test.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench import ROOT
from bench.serving.load_test import start  # the same server start and readiness wait
from serving.processes import free_port
from serving.processes import stop_process as stop


@dataclass
class Level:
    """What N clients saw in one closed-loop run."""

    clients: int
    ttft: list[float] = field(default_factory=list)  # seconds
    rates: list[float] = field(default_factory=list)  # decode tokens/s of each stream after its first chunk
    tokens: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def row(self) -> str:
        ms = np.percentile(np.array(self.ttft) * 1000, [50, 95, 99]) if self.ttft else [float("nan")] * 3
        rate = np.percentile(self.rates, 50) if self.rates else float("nan")
        kinds = f" {self.errors}" if self.errors else ""
        return (
            f"| {self.clients} | {len(self.ttft)} | {ms[0]:.1f} | {ms[1]:.1f} | {ms[2]:.1f} | {rate:.1f} | "
            f"{self.tokens / self.seconds:.1f} | {sum(self.errors.values())}{kinds} |"
        )


HEADER = [
    "| clients | streams | TTFT p50 ms | TTFT p95 ms | TTFT p99 ms | tokens/s per stream (p50) | "
    "tokens/s all streams | errors |",
    "|---|---|---|---|---|---|---|---|",
]


async def one_stream(session, url: str, body: dict, count, level: Level) -> None:
    import aiohttp

    sent = time.perf_counter()
    first = last = None
    pieces = []
    try:
        async with session.post(url, json=body) as response:
            if response.status != 200:
                await response.read()
                return level.error(f"http {response.status}")
            async for data in response.content.iter_any():  # whatever has arrived, as soon as it has
                last = time.perf_counter()
                first = first or last
                pieces.append(data)
    except (TimeoutError, aiohttp.ClientError) as error:
        return level.error(type(error).__name__)
    if first is None:  # eos at once: nothing to time
        return
    tokens = count(b"".join(pieces).decode("utf-8"))
    level.ttft.append(first - sent)
    level.tokens += tokens
    if tokens > 1 and last > first:
        level.rates.append((tokens - 1) / (last - first))


async def closed_loop(url: str, prompts: list[str], max_new_tokens: int, clients: int, duration: float, count) -> Level:
    import aiohttp

    level, counter = Level(clients), iter(range(10**9))
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        began = time.perf_counter()

        async def client():
            while time.perf_counter() < began + duration:
                i = next(counter)
                body = {"prompt": prompts[i % len(prompts)], "max_new_tokens": max_new_tokens, "seed": i}
                await one_stream(session, url, body, count, level)

        await asyncio.gather(*(client() for _ in range(clients)))
        level.seconds = time.perf_counter() - began
    return level


def token_counter(meta: dict):
    """len(tokens) of a text under the served package's tokenizer."""
    from transformers import AutoTokenizer

    if meta["source"] == "bento":
        import bentoml

        folder = bentoml.models.get(meta["bento_model"]).path
    else:
        from serving.models import from_registry

        folder = from_registry(meta["name"], meta["alias"], meta["version"]).path
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def report(args, meta: dict, serve, levels: list[Level]) -> str:
    single = next((level for level in levels if level.clients == 1 and level.ttft), None)
    if single is None:
        verdict = "not measured (no run with 1 client)"
    else:
        p50 = np.percentile(single.ttft, 50) * 1000
        verdict = f"{'met' if p50 <= 100 else 'NOT met'} ({p50:.1f} ms)"
    return "\n".join(
        [
            f"# Story load test, {time.strftime('%Y-%m-%d %H:%M')}",
            "",
            f"Command: `python -m bench.serving.story_load_test {' '.join(sys.argv[1:])}`",
            "",
            f"Served: {meta['name']} v{meta['version']} ({meta['mode']} mode); workers {serve.workers}, onnx_threads "
            f"{serve.onnx_threads}; max_new_tokens {args.max_new_tokens}, decoding {serve.defaults.model_dump()}. "
            f"Closed loop, {args.duration:.0f} s per level; client and server share the machine's "
            f"{os.cpu_count()} cores.",
            "",
            *HEADER,
            *(level.row() for level in levels),
            "",
            f"Target, first token within 100 ms (p50) at 1 client: {verdict}.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16], help="client counts, one run each")
    parser.add_argument("--duration", type=float, default=30, help="seconds per level")
    parser.add_argument("--max-new-tokens", type=int, help="default: story.serve.default_max_new_tokens")
    parser.add_argument("--bento", help="serve this built Bento (e.g. story:latest) instead of registry mode")
    parser.add_argument("--out", type=Path, help="also write the report here (Markdown)")
    args = parser.parse_args()

    from textops.params import load_params

    params = load_params(ROOT / "params.yaml").story
    args.max_new_tokens = args.max_new_tokens or params.serve.default_max_new_tokens
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp(prefix="story_load_test_")) / "server.log"
    cmd = ["bentoml", "serve", args.bento or "serving.story:StoryGenerator", "--host", "127.0.0.1", "--port", str(port)]
    # The server and token_counter's look-up of a bundled model must read the same BentoML store.
    os.environ.setdefault("BENTOML_HOME", str(ROOT / "bento_home"))
    proc = start(cmd, port, log, {"BENTOML_HOME": os.environ["BENTOML_HOME"]})
    try:
        with urllib.request.urlopen(f"{base}/metadata", timeout=5) as r:
            meta = json.loads(r.read())
        count, url, prompts = token_counter(meta), f"{base}/generate_stream", params.evaluate.prompts
        asyncio.run(closed_loop(url, prompts, args.max_new_tokens, 2, 3, count))  # warm-up, not reported
        levels = [
            asyncio.run(closed_loop(url, prompts, args.max_new_tokens, n, args.duration, count)) for n in args.levels
        ]
    finally:
        stop(proc)
    text = report(args, meta, params.serve, levels)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
