"""serving/webhooks.py: the signature check against MLflow's own signing code, replays, and which events wake."""

from __future__ import annotations

import json
import time

import pytest
from mlflow.webhooks.delivery import _generate_hmac_signature

from serving import webhooks

SECRET = "s3cret"


def signed(event: dict, secret: str = SECRET, at: float | None = None) -> tuple[dict[str, str], bytes]:
    body = json.dumps(event)
    stamp = str(int(time.time() if at is None else at))
    headers = {
        "x-mlflow-delivery-id": "d-1",
        "x-mlflow-timestamp": stamp,
        "x-mlflow-signature": _generate_hmac_signature(secret, "d-1", stamp, body),  # what the server sends
    }
    return headers, body.encode()


MOVED = {
    "entity": "model_version_alias",
    "action": "created",
    "data": {"name": "m", "alias": "champion", "version": "2"},
}


def test_an_event_signed_by_mlflow_verifies():
    assert webhooks.verify(SECRET, *signed(MOVED)) == MOVED


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h, b: (h, b.replace(b'"2"', b'"3"')), "signature does not match"),
        (lambda h, b: ({**h, "x-mlflow-signature": "v1,AAAA"}, b), "signature does not match"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "x-mlflow-timestamp"}, b), "missing"),
    ],
    ids=["body changed", "forged signature", "no timestamp"],
)
def test_a_tampered_event_is_refused(change, message):
    with pytest.raises(webhooks.BadEvent, match=message):
        webhooks.verify(SECRET, *change(*signed(MOVED)))


def test_a_wrong_secret_and_a_replay_are_refused():
    with pytest.raises(webhooks.BadEvent, match="signature does not match"):
        webhooks.verify(SECRET, *signed(MOVED, secret="other"))
    with pytest.raises(webhooks.BadEvent, match="s old"):
        webhooks.verify(SECRET, *signed(MOVED, at=time.time() - 3600))


def test_only_a_move_of_the_followed_alias_concerns_the_service():
    assert webhooks.concerns(MOVED, "m", "champion")
    assert not webhooks.concerns(MOVED, "m", "challenger")
    assert not webhooks.concerns(MOVED, "other", "champion")
    assert not webhooks.concerns({**MOVED, "entity": "model_version_tag"}, "m", "champion")
