"""The story service through HTTP: `bentoml serve serving.story:StoryGenerator` in registry mode on a
tiny registered `story-generator`, then the built Bento with MLflow out of reach.

Answers must equal the package's own OnnxGenerator (same seed, same setting), the stream must come
as the generator's pieces, one HTTP chunk each, and every bad parameter must get 400 naming it,
from both endpoints, before any stream starts.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from conftest import copy_repo
from service.servers import BENTOML, Held, metadata, start, stop, until
from service.story_fixtures import CONTEXT, NAME, TAGS, build_package, register

# Small limits keep bad requests small; max_new_tokens stays under the tiny model's context.
STORY_SERVE = {
    "max_prompt_chars": 300,
    "max_new_tokens": 48,
    "default_max_new_tokens": 12,
    "max_body_bytes": 4096,
    "poll_interval_s": 1.0,
    "workers": 1,
}
PROMPT = "Once upon"
GREEDY = {"do_sample": False, "repetition_penalty": 1.0}
ENDPOINTS = ["/generate", "/generate_stream"]


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return build_package(tmp_path_factory.mktemp("story-package"))


@pytest.fixture(scope="module")
def version(store, package) -> str:
    from textops import registry

    version = register(package.parent)
    registry.force(NAME, version, "story service tests")
    return version


@pytest.fixture(scope="module")
def local(package):
    from textops.story.generation import OnnxGenerator

    return OnnxGenerator(package, "model.onnx")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A copy of the repository whose params.yaml has the test limits: the service reads the one beside it."""
    repo = copy_repo(tmp_path_factory.mktemp("story-repo"))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["story"]["serve"].update(STORY_SERVE)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return repo


@pytest.fixture(scope="module")
def serve(repo):
    from textops.params import load_params

    return load_params(repo / "params.yaml").story.serve


@pytest.fixture(scope="module")
def server(version, repo, server_env, tmp_path_factory):
    server = start(
        ["serving.story:StoryGenerator"], repo, server_env, tmp_path_factory.mktemp("logs") / "story-server.log"
    )
    yield server
    stop(server)


def post(url: str, path: str, body, **kw) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{url}{path}", content=content, headers={"content-type": "application/json"}, timeout=60, **kw)


def stream(url: str, body: dict) -> tuple[httpx.Response, list[str], list[float]]:
    """The response, its HTTP chunks as text, and the time each arrived (seconds after sending)."""
    chunks, times, began = [], [], time.monotonic()
    with httpx.stream("POST", f"{url}/generate_stream", json=body, timeout=60) as response:
        for chunk in response.iter_raw():  # one h11 Data event per HTTP chunk, even if TCP merged them
            chunks.append(chunk.decode("utf-8"))
            times.append(time.monotonic() - began)
    return response, chunks, times


def setting(serve, **given):
    from textops.params import GenerationParams

    return GenerationParams(**{**serve.defaults.model_dump(), **given})


# ---------------------------------------------------------------- good requests


def test_generate_matches_the_package(server, local, serve, version):
    body = {"prompt": PROMPT, "max_new_tokens": 40, **GREEDY}
    got = post(server.url, "/generate", body)
    assert got.status_code == 200, got.text
    expected = local.generate(PROMPT, 40, setting(serve, **GREEDY))
    assert got.json() == {**expected, "model": {"name": NAME, "version": version}}
    assert expected["new_tokens"] >= 10 and "a time" in expected["text"]  # the tiny model learnt its texts


def test_defaults_come_from_story_serve_and_a_seed_makes_sampling_reproducible(server, local, serve):
    assert serve.defaults.do_sample  # so the seed matters
    first, again = (post(server.url, "/generate", {"prompt": PROMPT, "seed": 7}).json() for _ in range(2))
    expected = local.generate(PROMPT, serve.default_max_new_tokens, setting(serve), seed=7)
    assert first["text"] == again["text"] == expected["text"]
    assert first["new_tokens"] == expected["new_tokens"]
    overridden = post(server.url, "/generate", {"prompt": PROMPT, "seed": 7, "temperature": 3.0, "top_k": 0}).json()
    assert (
        overridden["text"]
        == local.generate(PROMPT, serve.default_max_new_tokens, setting(serve, temperature=3.0, top_k=0), seed=7)[
            "text"
        ]
    )


def test_stream_sends_the_generator_pieces_as_they_come(server, local, serve, version):
    body = {"prompt": PROMPT, "max_new_tokens": 40, **GREEDY}
    response, chunks, times = stream(server.url, body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "content-length" not in response.headers  # chunked: sent while generating
    assert (response.headers["x-model-name"], response.headers["x-model-version"]) == (NAME, version)
    assert chunks == list(local.stream(PROMPT, 40, setting(serve, **GREEDY)))  # one HTTP chunk per piece
    assert len(chunks) >= 10 and times == sorted(times) and times[-1] > times[0]
    assert "".join(chunks) == post(server.url, "/generate", body).json()["text"]


def test_sampled_stream_equals_generate_with_the_same_seed(server):
    body = {"prompt": PROMPT, "max_new_tokens": 30, "do_sample": True, "top_p": 0.9, "seed": 3}
    _, chunks, _ = stream(server.url, body)
    assert "".join(chunks) == post(server.url, "/generate", body).json()["text"]


def test_concurrent_streams_keep_their_own_state(server, local, serve):
    """Streams take turns token by token in one worker: each must still get its own sequence."""
    bodies = [
        {"prompt": p, "max_new_tokens": 30, "seed": s}
        for p, s in [(PROMPT, 1), ("The little dog", 2), ("She smiled", 3), ("", 4), (PROMPT, 5), ("One day", 6)]
    ]
    results: dict[int, str] = {}

    def run(i: int) -> None:
        results[i] = "".join(stream(server.url, bodies[i])[1])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for i, body in enumerate(bodies):
        assert results[i] == local.generate(body["prompt"], 30, setting(serve), seed=body["seed"])["text"], body


def test_empty_prompt_starts_from_end_of_text(server, local, serve):
    got = post(server.url, "/generate", {"prompt": "", "max_new_tokens": 30, **GREEDY}).json()
    assert got["prompt_tokens"] == 1 and got["prompt_truncated"] == 0
    assert got["text"] == local.generate("", 30, setting(serve, **GREEDY))["text"] != ""


def test_a_prompt_over_the_context_keeps_its_end(server, local, serve):
    prompt = "héllo wörld " * 24  # under max_prompt_chars, over the tiny model's 64 tokens
    got = post(server.url, "/generate", {"prompt": prompt, "max_new_tokens": 20, **GREEDY}).json()
    assert got["prompt_tokens"] == CONTEXT - 1 and got["prompt_truncated"] > 0
    assert (got["new_tokens"], got["finish_reason"]) == (1, "context")
    assert got["text"] == local.generate(prompt, 20, setting(serve, **GREEDY))["text"]


def test_limits_are_inclusive(server):
    body = {
        "prompt": "é" * STORY_SERVE["max_prompt_chars"],
        "max_new_tokens": STORY_SERVE["max_new_tokens"],
        "temperature": 10.0,
        "top_p": 1.0,
        "repetition_penalty": 10.0,
        "seed": 2**63 - 1,
    }
    assert post(server.url, "/generate", body).status_code == 200


# ---------------------------------------------------------------- bad requests: one test each, both endpoints

NAN, INF = b"NaN", b"Infinity"
MAX_NEW, MAX_CHARS = STORY_SERVE["max_new_tokens"], STORY_SERVE["max_prompt_chars"]
# name: (field, its bad value (JSON text), words of the error message)
BAD_FIELDS = {
    "max_new_tokens zero": ("max_new_tokens", b"0", "greater than or equal to 1"),
    "max_new_tokens negative": ("max_new_tokens", b"-5", "greater than or equal to 1"),
    "max_new_tokens over the cap": (
        "max_new_tokens",
        str(MAX_NEW + 1).encode(),
        f"the limit story.serve.max_new_tokens={MAX_NEW}",
    ),
    "max_new_tokens huge": ("max_new_tokens", b"1" + b"0" * 30, f"story.serve.max_new_tokens={MAX_NEW}"),
    "max_new_tokens float": ("max_new_tokens", b"5.0", "valid integer"),
    "max_new_tokens string": ("max_new_tokens", b'"5"', "valid integer"),
    "max_new_tokens boolean": ("max_new_tokens", b"true", "valid integer"),
    "max_new_tokens NaN": ("max_new_tokens", NAN, "valid integer"),
    "temperature zero": ("temperature", b"0", "greater than 0"),
    "temperature negative": ("temperature", b"-0.5", "greater than 0"),
    "temperature over 10": ("temperature", b"10.5", "less than or equal to 10"),
    "temperature NaN": ("temperature", NAN, "finite number"),
    "temperature infinite": ("temperature", INF, "finite number"),
    "temperature 1e400": ("temperature", b"1e400", "finite number"),
    "temperature string": ("temperature", b'"hot"', "valid number"),
    "top_k negative": ("top_k", b"-1", "greater than or equal to 0"),
    "top_k over the vocabulary": ("top_k", b"100000", "over the model's vocabulary size"),
    "top_k float": ("top_k", b"1.5", "valid integer"),
    "top_p zero": ("top_p", b"0", "greater than 0"),
    "top_p over 1": ("top_p", b"1.5", "less than or equal to 1"),
    "top_p NaN": ("top_p", NAN, "finite number"),
    "repetition_penalty under 1": ("repetition_penalty", b"0.5", "greater than or equal to 1"),
    "repetition_penalty over 10": ("repetition_penalty", b"11", "less than or equal to 10"),
    "repetition_penalty infinite": ("repetition_penalty", b"-Infinity", "finite number"),
    "do_sample string": ("do_sample", b'"yes"', "valid boolean"),
    "do_sample number": ("do_sample", b"1", "valid boolean"),
    "seed negative": ("seed", b"-1", "greater than or equal to 0"),
    "seed over 2**63-1": ("seed", str(2**63).encode(), "less than or equal to 9223372036854775807"),
    "seed float": ("seed", b"1.5", "valid integer"),
    "prompt too long": (
        "prompt",
        json.dumps("a" * (MAX_CHARS + 1)).encode(),
        f"has {MAX_CHARS + 1} characters; the limit is story.serve.max_prompt_chars={MAX_CHARS}",
    ),
    "prompt with NUL": ("prompt", b'"once\\u0000upon"', "NUL character"),
    "prompt number": ("prompt", b"5", "valid string"),
    "prompt null": ("prompt", b"null", "valid string"),
    "prompt list": ("prompt", b'["once"]', "valid string"),
    "unknown field": ("max_tokens", b"5", "Extra inputs are not permitted"),
}
BAD_BODIES = {
    "no prompt": (b'{"max_new_tokens": 5}', "Field required"),
    "empty body": (b"", "Field required"),
    "top-level array": (b'["once upon"]', "should be an object"),
    "lone surrogate": (b'{"prompt": "once \\ud800 upon"}', "Invalid JSON"),
    "invalid UTF-8": (b'{"prompt": "caf\xe9"}', "Invalid JSON"),
    "truncated JSON": (b'{"prompt": "once', "Invalid JSON"),
}


def body_with(field: str, value: bytes) -> bytes:
    base = b'"prompt": "Once upon", ' if field != "prompt" else b""
    return b"{" + base + b'"' + field.encode() + b'": ' + value + b"}"


def errors(response: httpx.Response) -> list[tuple[str, str]]:
    """(field, message) of each validation error in a 400 answer."""
    assert response.status_code == 400, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")  # an error, not a stream
    return [(".".join(str(p) for p in d["loc"]), d["msg"]) for d in response.json()["detail"]]


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("field, value, expected", BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_bad_field_gets_400_naming_it(server, path, field, value, expected):
    [(where, message)] = errors(post(server.url, path, body_with(field, value)))
    assert where == field and expected in message, message


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("content, expected", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_bad_body_gets_400(server, path, content, expected):
    assert any(expected in message for _, message in errors(post(server.url, path, content)))


@pytest.mark.parametrize("path", ENDPOINTS)
def test_body_over_the_limit_gets_413(server, path):
    body = json.dumps({"prompt": "a" * STORY_SERVE["max_body_bytes"]}).encode()
    response = post(server.url, path, body)
    assert response.status_code == 413
    assert f"the limit is serve.max_body_bytes={STORY_SERVE['max_body_bytes']}" in response.json()["error"]


@pytest.mark.parametrize("path", ENDPOINTS)
def test_pickle_content_type_gets_415(server, path):
    response = httpx.post(
        f"{server.url}{path}",
        content=b"\x80\x04N.",
        timeout=30,
        headers={"content-type": "application/vnd.bentoml+pickle"},
    )
    assert response.status_code == 415


def test_a_client_that_leaves_mid_stream_does_not_hurt_the_server(server, local, serve):
    body = {"prompt": PROMPT, "max_new_tokens": MAX_NEW, "do_sample": True, "seed": 1}
    for _ in range(3):
        with httpx.stream("POST", f"{server.url}/generate_stream", json=body, timeout=60) as response:
            next(response.iter_raw())  # one chunk, then hang up
    got = post(server.url, "/generate", {"prompt": PROMPT, "max_new_tokens": 20, **GREEDY}).json()
    assert got["text"] == local.generate(PROMPT, 20, setting(serve, **GREEDY))["text"]


# ---------------------------------------------------------------- metadata, health, docs


def test_metadata_describes_the_registry_version(server, version):
    meta = metadata(server.url)
    assert (meta["name"], meta["version"], meta["alias"]) == (NAME, version, "champion")
    assert (meta["mode"], meta["source"]) == ("registry", "registry")
    assert meta["poll_interval_s"] == STORY_SERVE["poll_interval_s"]
    for key in ("eval_perplexity", "int8_perplexity", "tokens_per_s", "size_mb"):
        assert meta["metrics"][key] == float(TAGS[key]), key
    assert (meta["git_commit"], meta["data_hash"]) == (TAGS["git_commit"], TAGS["data_hash"])
    assert meta["limits"]["max_new_tokens"] == MAX_NEW and meta["limits"]["vocab_size"] > 256


def test_health_and_openapi(server):
    for path in ("/readyz", "/healthz", "/livez"):
        assert httpx.get(f"{server.url}{path}", timeout=10).status_code == 200, path
    paths = httpx.get(f"{server.url}/docs.json", timeout=10).json()["paths"]
    for path in ENDPOINTS:
        schema = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert schema["properties"]["prompt"]["maxLength"] == MAX_CHARS, path
        assert "top_k" in schema["properties"] and schema["additionalProperties"] is False
    assert "text/plain; charset=utf-8" in paths["/generate_stream"]["post"]["responses"]["200"]["content"]


def test_no_request_got_500(server):
    """Runs after the tests above (file order): the access log holds every status the server answered."""
    logged = [int(s) for s in re.findall(r"\(status=(\d{3}),", server.output())]
    assert len(logged) > 2 * len(BAD_FIELDS) and not [s for s in logged if s >= 500]
    assert "Error while streaming response" not in server.output() and server.proc.poll() is None
    # every 4xx above is one log line, not a traceback (serving/limits.py)
    assert "client error on /generate [POST]" in server.output() and "Traceback" not in server.output()


def test_the_shared_exposure_code_guards_this_service_too(version, repo, server_env, tmp_path):
    """serving/exposure.py on the story service: the bind address, the token, the cap (here 1)."""
    exposed = tmp_path / "repo"
    shutil.copytree(repo, exposed)
    params = yaml.safe_load((exposed / "params.yaml").read_text())
    params["story"]["serve"].update(auth_token_env="TEXTOPS_TEST_STORY_TOKEN", max_concurrency=1)
    (exposed / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**server_env, "TEXTOPS_TEST_STORY_TOKEN": "story-token", "BENTOML_HOME": str(tmp_path / "home")}
    auth = {"Authorization": "Bearer story-token"}

    def send(path: str, headers: dict | None = None) -> httpx.Response:
        return httpx.post(
            f"{server.url}{path}", json={"prompt": PROMPT, "max_new_tokens": 4}, headers=headers, timeout=60
        )

    server = start(["serving.story:StoryGenerator"], exposed, env, tmp_path / "exposed.log", host=None)
    try:
        port = int(server.url.rsplit(":", 1)[1])
        assert {c.laddr.ip for c in psutil.net_connections("tcp") if c.laddr.port == port and c.status == "LISTEN"} == {
            "127.0.0.1"
        }
        assert send("/generate").status_code == 401 and send("/generate_stream").status_code == 401
        assert send("/generate", auth).status_code == 200
        assert all(httpx.get(f"{server.url}{p}", timeout=10).status_code == 200 for p in ("/readyz", "/healthz"))
        held = Held(server.url, "/generate", auth)  # the one slot, taken
        try:
            until(lambda: send("/generate_stream", auth).status_code == 503)  # once it has read the held headers
            busy = send("/generate", auth)
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        finally:
            held.close()
        until(lambda: send("/generate", auth).status_code == 200)
    finally:
        stop(server)


# ---------------------------------------------------------------- the built Bento, without MLflow


@pytest.fixture(scope="module")
def bento(version, repo, server_env) -> str:
    run = subprocess.run(
        [BENTOML, "build", "-f", "bentofile.story.yaml", "--output", "tag"],
        cwd=repo,
        env=server_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return re.search(r"__tag__:(\S+)", run.stdout).group(1)


def test_bento_serves_the_bundled_version_without_mlflow(bento, version, server_env, local, serve, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("story-elsewhere")  # neither serving/ nor params.yaml here
    env = {
        **server_env,
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "3",
    }  # nothing listens on the discard port
    server = start([bento], elsewhere, env, tmp_path_factory.mktemp("logs") / "story-bento.log")
    try:
        meta = metadata(server.url)
        assert (meta["mode"], meta["source"], meta["version"]) == ("bento", "bento", version)
        assert bento.startswith("story:")
        body = {"prompt": PROMPT, "max_new_tokens": 30, **GREEDY}
        expected = local.generate(PROMPT, 30, setting(serve, **GREEDY))
        assert post(server.url, "/generate", body).json()["text"] == expected["text"]
        assert "".join(stream(server.url, body)[1]) == expected["text"]
        assert post(server.url, "/generate", {"prompt": "x", "max_new_tokens": MAX_NEW + 1}).status_code == 400
        assert "could not follow" not in server.output()
    finally:
        stop(server)
