"""serve.batch_wait: the override of BentoML's batcher is in place and keeps the learned wait at zero."""

from __future__ import annotations

import _bentoml_impl.server.app as app
from bentoml._internal.marshal.dispatcher import CorkDispatcher

from serving import batching


def test_service_module_installs_the_no_wait_dispatcher():
    import serving.service  # noqa: F401  (importing it applies serve.batch_wait from params.yaml)

    assert serving.service.SERVE.batch_wait == "none"
    assert app.CorkDispatcher is batching.NoWaitDispatcher


def test_no_wait_optimizer_ignores_queueing_that_adaptive_would_learn():
    adaptive, no_wait = (
        CorkDispatcher(2000, 64, fallback=lambda: None),
        batching.NoWaitDispatcher(2000, 64, fallback=lambda: None),
    )
    for dispatcher in (adaptive, no_wait):
        for i in range(20):  # batches that sat 150 ms behind a busy model, 3 ms per text
            n = i % 8 + 1
            dispatcher.optimizer.log_outbound(n=n, wait=0.150, duration=0.003 * n + 0.002)
        dispatcher.optimizer.trigger_refresh()
    assert adaptive.optimizer.wait > 0.1  # BentoML would now hold a lone request ~140 ms
    assert no_wait.optimizer.wait == 0
    assert abs(no_wait.optimizer.o_a - 0.003) < 1e-4  # the latency model that sheds load is still fitted


def test_adaptive_restores_bentoml_dispatcher():
    try:
        batching.use("adaptive")
        assert app.CorkDispatcher is CorkDispatcher
    finally:
        batching.use("none")
