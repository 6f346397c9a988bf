"""POST /classify through HTTP on the registry-mode server: every limit answers 4xx with a message
that names the problem, never 500; good requests match the package's ONNX model."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from service.conftest import NAME, SERVE
from service.servers import classify, metadata, probabilities

SENTENCES = ["the film was good", "a dull , lifeless plot", "truly wonderful acting", "the ending is awful ."]
MAX_ITEMS, MAX_CHARS, MAX_BYTES = SERVE["max_items"], SERVE["max_chars"], SERVE["max_body_bytes"]

# (body, words the error must contain): pydantic's validation of the `texts` field.
BAD_JSON = {
    "empty text": ({"texts": ""}, "text is empty or whitespace only"),
    "whitespace-only text": ({"texts": ["good", " \t\n "]}, "text is empty or whitespace only"),
    "NUL character": ({"texts": "good\x00film"}, "NUL character"),
    "text over max_chars": (
        {"texts": "a" * (MAX_CHARS + 1)},
        f"has {MAX_CHARS + 1} characters; the limit is serve.max_chars={MAX_CHARS}",
    ),
    "more than max_items": ({"texts": ["good"] * (MAX_ITEMS + 1)}, f"at most {MAX_ITEMS} items"),
    "empty list": ({"texts": []}, "at least 1 item"),
    "number": ({"texts": 5}, "valid array"),
    "null": ({"texts": None}, "valid array"),
    "object": ({"texts": {"a": "good"}}, "valid array"),
    "numbers in the list": ({"texts": ["good", 7]}, "valid string"),
    "nested list": ({"texts": [["good"]]}, "valid string"),
    "no texts field": ({"text": "good"}, "Field required"),
    "top-level array": (["good"], "should be an object"),
}
# Raw bodies that are not valid JSON (lone surrogates and invalid UTF-8 included).
BAD_BYTES = {
    "invalid JSON": b"{not json",
    "truncated JSON": b'{"texts": "good',
    "lone high surrogate": b'{"texts": "good \\ud800 film"}',
    "lone low surrogate": b'{"texts": ["\\udc00"]}',
    "invalid UTF-8": b'{"texts": "caf\xe9"}',
    "deep nesting": b'{"texts": ' + b"[" * 1500 + b"]" * 1500 + b"}",
}


def post(url: str, content, content_type: str = "application/json") -> httpx.Response:
    return httpx.post(f"{url}/classify", content=content, headers={"content-type": content_type}, timeout=30)


def messages(response: httpx.Response) -> str:
    body = response.json()
    return " | ".join(d["msg"] for d in body["detail"]) if "detail" in body else json.dumps(body)


@pytest.mark.parametrize("body, expected", BAD_JSON.values(), ids=BAD_JSON.keys())
def test_bad_json_gets_400_naming_the_problem(registry_server, body, expected):
    response = post(registry_server.url, json.dumps(body).encode())
    assert response.status_code == 400, response.text
    assert expected in messages(response)


@pytest.mark.parametrize("content", BAD_BYTES.values(), ids=BAD_BYTES.keys())
def test_invalid_json_gets_400_naming_it(registry_server, content):
    assert len(content) <= MAX_BYTES  # the body limit must not answer first
    response = post(registry_server.url, content)
    assert response.status_code == 400, response.text
    assert "Invalid JSON" in messages(response)


def big_body() -> bytes:
    return json.dumps({"texts": ["good"] * 1000}).encode()  # also over max_items: the body limit answers first


def test_body_over_the_limit_gets_413_by_content_length(registry_server):
    body = big_body()
    response = post(registry_server.url, body)
    assert response.status_code == 413
    assert (
        response.json()["error"] == f"request body is {len(body)} bytes; the limit is serve.max_body_bytes={MAX_BYTES}"
    )


def test_chunked_body_over_the_limit_gets_413(registry_server):
    body = big_body()
    chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)]  # an iterator: no Content-Length
    response = post(registry_server.url, iter(chunks))
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert response.status_code == 413
    assert f"the limit is serve.max_body_bytes={MAX_BYTES}" in response.json()["error"]


def test_chunked_body_under_the_limit_is_classified(registry_server):
    body = json.dumps({"texts": SENTENCES}).encode()  # BodyLimit reads it whole, then replays it to the app
    chunked = post(registry_server.url, iter([body[:10], body[10:]]))
    assert chunked.request.headers.get("transfer-encoding") == "chunked"
    assert probabilities(chunked) == probabilities(classify(registry_server.url, SENTENCES))


def test_malformed_content_length_gets_400(registry_server):
    # httpx refuses to send this header, so the request is written by hand.
    address = urlsplit(registry_server.url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as conn:
        conn.sendall(
            b"POST /classify HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: 12abc\r\n\r\n" + b'{"texts": "good"}'
        )
        status_line = conn.recv(4096).split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 400"), status_line


def test_pickle_content_type_gets_415(registry_server):
    response = post(registry_server.url, b"\x80\x04N.", "application/vnd.bentoml+pickle")
    assert response.status_code == 415
    assert "application/vnd.bentoml+pickle is not allowed" in response.text


def list_atol(serve, package: Path) -> float:
    # A batch-invariant model (the quantize stage's gate measured it; its manifest says so) gives a text the same
    # probabilities whatever shares its ONNX call, so the service batches and the answers are identical. A model
    # that is not (dynamic INT8) is served one text per call, which is as exact.
    from textops.inference import OnnxClassifier

    assert OnnxClassifier(package, "model.onnx").batch_invariant or bucket_of(serve, package) == 1
    return 0.0


def bucket_of(serve, package: Path) -> int:
    from textops.inference import OnnxClassifier

    return serve.inference_batch_size if OnnxClassifier(package, "model.onnx").batch_invariant else 1


def test_one_text_is_a_list_of_one(registry_server):
    one, listed = classify(registry_server.url, SENTENCES[0]), classify(registry_server.url, [SENTENCES[0]])
    assert len(one.json()) == 1
    assert one.json() == listed.json()  # the same batch of one: identical, not merely close


def test_a_text_in_a_list_gets_the_probabilities_it_gets_alone(registry_server, serve_params, models):
    package = models[metadata(registry_server.url)["version"]]
    alone = [probabilities(classify(registry_server.url, text))[0] for text in SENTENCES]
    together = probabilities(classify(registry_server.url, SENTENCES))
    assert len(together) == len(SENTENCES)
    for a, b in zip(alone, together):
        assert a.keys() == b.keys() == {"negative", "positive"}
        assert b == pytest.approx(a, abs=list_atol(serve_params, package))


def test_a_text_alone_and_inside_a_full_batch_gets_identical_answers(registry_server, serve_params, models):
    """The default model is batch-invariant, so the service runs a request's texts in length buckets of
    serve.inference_batch_size; a text's answer is still bit-for-bit the one it gets alone, next to short texts,
    long texts and padding."""
    package = models[metadata(registry_server.url)["version"]]
    assert bucket_of(serve_params, package) > 1  # the batched path is the one under test
    longest = ("an overlong , rambling and yet somehow charming film " * 4)[:MAX_CHARS]  # truncated at max_length
    for text in SENTENCES:
        alone = classify(registry_server.url, text).json()[0]
        batch = [text, *SENTENCES, *[longest] * (MAX_ITEMS - 1 - len(SENTENCES))]
        response = classify(registry_server.url, batch)
        assert response.status_code == 200 and len(response.json()) == MAX_ITEMS
        assert response.json()[0] == alone


def test_predictions_match_the_served_package(registry_server, models, serve_params):
    from textops.inference import OnnxClassifier

    local_path = models[metadata(registry_server.url)["version"]]
    local = OnnxClassifier(local_path, "model.onnx")
    for text in SENTENCES:  # a lone request is a batch of one, whatever the batcher does
        got, expected = classify(registry_server.url, text).json()[0], local.classify([text])[0]
        assert got["label"] == expected["label"]
        assert got["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)
        assert got["probability"] == max(got["probabilities"].values())
        assert sum(got["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    got = classify(registry_server.url, SENTENCES).json()
    expected = local.classify(SENTENCES, batch_size=bucket_of(serve_params, local_path))
    assert [g["label"] for g in got] == [e["label"] for e in expected]
    for g, e in zip(got, expected):
        assert g["probabilities"] == pytest.approx(e["probabilities"], abs=list_atol(serve_params, local_path))


def test_limits_are_inclusive(registry_server):
    response = classify(registry_server.url, ["é" * MAX_CHARS] * MAX_ITEMS)  # characters, not bytes
    assert response.status_code == 200, response.text
    assert len(response.json()) == MAX_ITEMS


def test_metadata_describes_the_registry_version(registry_server, models):
    from textops import registry

    meta = metadata(registry_server.url)
    tags = registry.require_version(NAME, meta["version"]).tags
    assert meta["version"] == registry.version_of(NAME, "champion")
    assert (meta["name"], meta["alias"], meta["mode"], meta["source"]) == (NAME, "champion", "registry", "registry")
    assert meta["poll_interval_s"] == SERVE["poll_interval_s"]
    assert (meta["run_id"], meta["git_commit"], meta["data_hash"]) == (
        tags["run_id"],
        tags["git_commit"],
        tags["data_hash"],
    )
    assert meta["metrics"]["eval_accuracy"] == float(tags["eval_accuracy"])
    assert 0 < meta["metrics"]["size_mb"] < 5  # the tiny model


def test_health_endpoints(registry_server):
    for path in ("/readyz", "/healthz", "/livez"):
        assert httpx.get(f"{registry_server.url}{path}", timeout=10).status_code == 200, path
    paths = httpx.get(f"{registry_server.url}/docs.json", timeout=10).json()["paths"]
    assert (
        paths["/classify"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]["texts"][
            "maxItems"
        ]
        == MAX_ITEMS
    )


def test_no_request_got_500_and_the_server_still_serves(registry_server):
    url = registry_server.url
    answers = [post(url, json.dumps(body).encode()).status_code for body, _ in BAD_JSON.values()]
    answers += [post(url, content).status_code for content in BAD_BYTES.values()]
    answers += [
        post(url, big_body()).status_code,
        post(url, iter([big_body()])).status_code,
        post(url, b"x", "application/vnd.bentoml+pickle").status_code,
    ]
    assert sorted(set(answers)) == [400, 413, 415]
    # The server's log holds every request it answered, those of the tests above included.
    logged = [int(s) for s in re.findall(r"\(status=(\d{3}),", registry_server.output())]
    assert len(logged) >= len(answers) and not [s for s in logged if s >= 500]
    # Client errors are logged one line each (serving/limits.py), with no traceback.
    log = registry_server.output()
    assert "client error on /classify [POST]: ValidationError" in log
    assert "Traceback" not in log
    assert classify(url, SENTENCES).status_code == 200
    assert registry_server.proc.poll() is None
