"""How BentoML's batcher waits before it releases a batch (`serve.batch_wait` in params.yaml).

BentoML's CorkDispatcher holds a batch back ("corks" it) for about the average wait of recent
batches. That average includes the time batches spent queued behind a busy model, so the wait it
learns under load is then imposed on light traffic too. With `batch_wait: none` a batch is released
as soon as the model is free, holding whatever queued meanwhile: batches still form under load (up
to `serve.max_batch_size`, split by BentoML beyond it), and `serve.max_latency_ms` still sheds load.
Measured with the INT8 MiniLM on 2 cores, same procedure for both (bench/serving/batch_wait_ab.sh, two
runs in bench/results/batch_wait_ab.md): one client waited twice as long with `adaptive` (p50 10 ms
against 5 ms, both runs); throughput at 32 clients and p99 at half of it were within run-to-run
noise (p99 103 against 17 ms in one run, 61 against 110 ms in the other). This INT8 model gains
little from batching on CPU (its per-text cost is nearly flat in the batch size).

BentoML builds its dispatchers from `_bentoml_impl.server.app.CorkDispatcher` when the service app
is made, right after this package is imported: `use()` must run at import time to take effect.
Those are BentoML internals (serving/bentoml_private.py); tests/service checks the override is in place.
"""

from __future__ import annotations

from typing import Literal

from serving.bentoml_private import CorkDispatcher, Optimizer, server_app


class NoWaitOptimizer(Optimizer):
    """BentoML's latency model (used to shed load), with the learned cork wait pinned at zero."""

    def trigger_refresh(self) -> None:
        super().trigger_refresh()
        self.wait = 0


class NoWaitDispatcher(CorkDispatcher):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.optimizer = NoWaitOptimizer(self.max_latency)


def use(batch_wait: Literal["adaptive", "none"]) -> None:
    server_app().CorkDispatcher = NoWaitDispatcher if batch_wait == "none" else CorkDispatcher
