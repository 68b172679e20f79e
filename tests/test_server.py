"""The HTTP service, spoken to over real HTTP on loopback.

Two kinds of server: ``python -m adaptive_tts serve`` in a subprocess (the service as a user starts it,
on this machine's real memory), and ``uvicorn.Server`` in a thread around a backend whose budget manager
reads an injected memory level (how the admission tests make an 8 GB device with little free memory,
as tests/test_backend.py does). Every loop here is bounded in count and time.
"""

from __future__ import annotations

import os
import struct
import subprocess
import threading
import time
import wave
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

import httpx
import psutil
import pytest
import schemathesis
import uvicorn
from conftest import CLI, Memory, simulated_backend
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from texts import LONG_UNPUNCTUATED

from adaptive_tts.audio import STREAMING_DATA_SIZE
from adaptive_tts.backend import SmartAdaptiveBackend
from adaptive_tts.runtime.estimator import EstimatorConstants
from adaptive_tts.runtime.monitor import ACTION_OK
from adaptive_tts.runtime.process import current_rss_mb
from adaptive_tts.server import ESTIMATE_LENGTH_FACTOR, MAX_BODY_BYTES, create_app
from adaptive_tts.voice.engine import resolve_compute
from experiments.serving import HOST, free_port, running_server

SHORT = "Hello there, this is the server speaking."
SEED_ENDPOINTS = [
    "/tts",
    "/hardware",
    "/estimate-memory",
    "/system-status",
    "/optimize-for-hardware",
    "/cache/clear",
    "/health",
    "/v1/audio/speech",
]


# ------------------------------------------------------------------------------------------------
# Servers
# ------------------------------------------------------------------------------------------------


@contextmanager
def serve_cli(log_path: Path, *args: str, start_timeout_s: float = 240) -> Iterator[tuple[str, psutil.Process]]:
    """``python -m adaptive_tts -v serve`` on a free loopback port; yields its URL and its process.

    The calibration file points into the test's directory, so the estimator is the profile's
    (uncalibrated) one whatever another run has calibrated on this machine.
    """
    env = {**os.environ, "ADAPTIVE_TTS_CALIBRATION": str(log_path.with_name("calibration.json"))}
    with running_server(list(args), log_path, start_timeout_s, env, verbose=True) as (url, pid):
        yield url, psutil.Process(pid)


@contextmanager
def serve_app(app) -> Iterator[str]:
    """``app`` under uvicorn in a thread of this process, on a free loopback port."""
    server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://{HOST}:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """The CLI's server, shared by this module's black-box tests: (URL, its log file)."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    with serve_cli(log) as (url, _):
        yield url, log


@pytest.fixture
def client(live) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live[0], timeout=300) as c:
        yield c


@pytest.fixture(scope="module")
def device(tmp_path_factory) -> Iterator[tuple[SmartAdaptiveBackend, Memory]]:
    """A backend on the M1 Air profile whose budget manager reads ``Memory`` instead of this machine,
    and whose monitor reads an idle CPU (20 %) instead of this host's load."""
    memory = Memory(6000.0)
    backend = simulated_backend(tmp_path_factory.mktemp("cal"), memory)
    backend.monitor._cpu_percent = lambda: 20.0
    yield backend, memory
    backend.close()


def read_wav(data: bytes) -> tuple[int, int]:
    """(sample rate, frames) of a complete WAV."""
    with wave.open(BytesIO(data)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
        return wav.getframerate(), wav.getnframes()


def poll(predicate, timeout_s: float, every_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return predicate()


# ------------------------------------------------------------------------------------------------
# The CLI's server: endpoints and payloads
# ------------------------------------------------------------------------------------------------


def test_serves_every_endpoint_with_openapi_docs(client):
    assert client.get("/health").json()["status"] == "ok"
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    paths = client.get("/openapi.json").json()["paths"]
    assert set(SEED_ENDPOINTS) <= set(paths)


def test_serve_rejects_an_unknown_profile_in_one_line():
    result = subprocess.run(
        [*CLI, "serve", "--profile", "nope", "--port", str(free_port())], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert "unknown hardware profile 'nope'" in result.stderr and "Traceback" not in result.stderr


def test_tts_streams_a_wav_header_of_unknown_length_then_pcm(client):
    text = "The first sentence is short. " + LONG_UNPUNCTUATED[:300]
    arrivals = []
    started = time.perf_counter()
    with client.stream("POST", "/tts", files={"text": (None, text)}) as response:  # curl -F "text=..."
        assert response.status_code == 200
        assert response.headers["content-type"] == "audio/wav"
        assert "content-length" not in response.headers and response.headers["transfer-encoding"] == "chunked"
        assert response.headers["x-sample-rate"] == "22050"
        body = b""
        for piece in response.iter_raw():
            arrivals.append(time.perf_counter() - started)
            body += piece
    assert body[:4] == b"RIFF" and body[8:16] == b"WAVEfmt "
    assert struct.unpack("<I", body[40:44])[0] == STREAMING_DATA_SIZE
    samples = (len(body) - 44) // 2
    assert samples / 22050 > 10  # the whole text, not just its first sentence
    # Streamed, not buffered: the first audio came well before the last.
    assert arrivals[0] < 0.7 * arrivals[-1], arrivals


def test_seed_payloads(client):
    hardware = client.get("/hardware").json()
    assert {"hardware", "profile", "memory_budget", "quantization", "selected_configuration"} <= set(hardware)
    assert hardware["selected_configuration"]["quantization"] == "fp32"  # the server's default
    assert hardware["selected_configuration"]["compute"] == resolve_compute("auto")

    # What the payloads carry; their verdicts depend on this machine's memory and load, and are pinned
    # where the test sets those (test_seed_verdicts_follow_the_devices_readings).
    estimate = client.post("/estimate-memory", data={"text": "Your text here"}).json()
    assert {"status", "estimate", "recommendation"} == set(estimate)
    assert {"estimated_mb", "available_mb", "safe", "text_tokens", "text_length"} <= set(estimate["estimate"])
    assert estimate["estimate"]["text_length"] == len("Your text here")

    status = client.get("/system-status").json()
    assert {"cpu_percent", "memory_percent", "memory_available_gb"} <= set(status["resources"])
    assert {"memory_critical", "cpu_maxed", "thermal_likely"} <= set(status["throttling_risk"])
    assert {"memory_budget_safe", "recommended_action"} <= set(status)
    assert status["queue"]["max_jobs"] == 16

    assert client.post("/cache/clear").json()["status"] == "cleared"
    optimized = client.post("/optimize-for-hardware")
    assert optimized.status_code == 200 and "freed_rss_mb" in optimized.json()


def test_openai_speech_formats_speed_and_streaming(client):
    request = {"model": "tts-1-hd", "input": "Good morning to you.", "voice": "nova"}
    whole = client.post("/v1/audio/speech", json=request)
    assert whole.status_code == 200 and whole.headers["content-type"] == "audio/wav"
    assert int(whole.headers["content-length"]) == len(whole.content)
    assert whole.headers["x-voice"] == client.get("/health").json()["voice"]
    rate, frames = read_wav(whole.content)  # a complete WAV: its header has the real length
    assert rate == 22050 and frames == (len(whole.content) - 44) // 2

    # The same request as raw PCM is the same audio (the second is a cache hit), without the header.
    pcm = client.post("/v1/audio/speech", json={**request, "voice": "en_US-joe-medium", "response_format": "pcm"})
    assert pcm.headers["content-type"] == "audio/pcm" and pcm.headers["x-cache"] == "hit"
    assert pcm.content == whole.content[44:]

    streamed = client.post("/v1/audio/speech", json={**request, "stream": True})
    assert struct.unpack("<I", streamed.content[40:44])[0] == STREAMING_DATA_SIZE
    assert "content-length" not in streamed.headers

    fast = client.post("/v1/audio/speech", json={**request, "speed": 2.0, "response_format": "pcm"})
    slow = client.post("/v1/audio/speech", json={**request, "speed": 0.5, "response_format": "pcm"})
    # length_scale = 1 / speed: 4x the frames' scale, but each phoneme's frames are rounded up and its
    # duration is drawn at random (this endpoint takes no seed): one run measured 2.44x. Unapplied, 1x.
    assert len(slow.content) > 2.0 * len(fast.content)


def _multipart(field: str, value: bytes) -> dict:
    boundary = b"fuzzboundary"
    body = (
        b"--"
        + boundary
        + b'\r\nContent-Disposition: form-data; name="'
        + field.encode()
        + b'"\r\n\r\n'
        + value
        + b"\r\n--"
        + boundary
        + b"--\r\n"
    )
    return {"content": body, "headers": {"content-type": "multipart/form-data; boundary=fuzzboundary"}}


JSON = {"content-type": "application/json"}
FORM = {"content-type": "application/x-www-form-urlencoded"}

#: (id, path, request keyword arguments (``{limit}`` stands for max_text_length), status, words in the reply)
BAD_REQUESTS = [
    ("tts-missing-text", "/tts", {"data": {}}, 422, "text"),
    ("tts-empty-text", "/tts", {"data": {"text": ""}}, 422, "text"),
    ("tts-blank-text", "/tts", {"data": {"text": "   \n "}}, 422, "text is empty"),
    ("tts-control-chars", "/tts", {"data": {"text": "a\x00b\x07"}}, 422, "control characters"),
    ("tts-unspeakable", "/tts", {"data": {"text": "...!?"}}, 422, "nothing speakable"),
    ("tts-too-long", "/tts", {"data": {"text": "{limit}"}}, 413, "the limit on this hardware is"),
    ("tts-raw-invalid-utf8", "/tts", {"content": b"text=\xff\xfehello", "headers": FORM}, 400, "not valid UTF-8"),
    ("tts-escaped-invalid-utf8", "/tts", {"content": b"text=%C3%28", "headers": FORM}, 400, "not valid UTF-8"),
    ("tts-multipart-invalid-utf8", "/tts", _multipart("text", b"caf\xe9"), 400, "not valid UTF-8"),
    (
        "tts-broken-multipart",
        "/tts",
        {"content": b"garbage", "headers": {"content-type": "multipart/form-data"}},
        400,
        "multipart",
    ),
    ("tts-length-scale-type", "/tts", {"data": {"text": "hi", "length_scale": "fast"}}, 422, "length_scale"),
    ("tts-length-scale-nan", "/tts", {"data": {"text": "hi", "length_scale": "nan"}}, 422, "finite"),
    ("tts-seed-range", "/tts", {"data": {"text": "hi", "seed": "-1"}}, 422, "seed"),
    ("tts-json-body", "/tts", {"json": {"text": "hi"}}, 422, "text"),
    ("body-too-large", "/tts", {"content": b"text=" + b"a" * MAX_BODY_BYTES, "headers": FORM}, 413, "limit"),
    (
        "speech-unknown-format",
        "/v1/audio/speech",
        {"json": {"input": "hi", "response_format": "flac"}},
        422,
        "response_format",
    ),
    ("speech-input-type", "/v1/audio/speech", {"json": {"input": 123}}, 422, "valid string"),
    ("speech-missing-input", "/v1/audio/speech", {"json": {"model": "tts-1"}}, 422, "input"),
    ("speech-speed-range", "/v1/audio/speech", {"json": {"input": "hi", "speed": 10}}, 422, "speed"),
    ("speech-stream-type", "/v1/audio/speech", {"json": {"input": "hi", "stream": "maybe"}}, 422, "stream"),
    (
        "speech-lone-surrogate",
        "/v1/audio/speech",
        {"content": b'{"input": "a\\ud800b"}', "headers": JSON},
        422,
        "U+D800",
    ),
    (
        "speech-invalid-utf8",
        "/v1/audio/speech",
        {"content": b'{"input": "\xff"}', "headers": JSON},
        400,
        "not valid UTF-8",
    ),
    ("speech-broken-json", "/v1/audio/speech", {"content": b'{"input": "hi"', "headers": JSON}, 422, "JSON"),
    ("speech-json-array", "/v1/audio/speech", {"content": b"[1, 2]", "headers": JSON}, 422, "valid dictionary"),
    ("speech-too-long", "/v1/audio/speech", {"json": {"input": "{limit}"}}, 413, "the limit on this hardware is"),
    ("estimate-missing-text", "/estimate-memory", {"data": {}}, 422, "text"),
    ("estimate-too-long", "/estimate-memory", {"data": {"text": "{estimate_limit}"}}, 413, "estimates stop at"),
]


def fill(kwargs: dict, limit: int) -> dict:
    """Replace the placeholders with texts just over the limits."""
    texts = {"{limit}": "a " * (limit // 2) + "b", "{estimate_limit}": "a" * (ESTIMATE_LENGTH_FACTOR * limit + 1)}
    out = {}
    for key, value in kwargs.items():
        if isinstance(value, dict):
            value = {k: texts.get(v, v) if isinstance(v, str) else v for k, v in value.items()}
        out[key] = value
    return out


@pytest.fixture(scope="module")
def text_limit(live) -> int:
    return httpx.get(live[0] + "/hardware", timeout=60).json()["selected_configuration"]["max_text_length"]


@pytest.mark.parametrize(
    "path, kwargs, status, words", [case[1:] for case in BAD_REQUESTS], ids=[case[0] for case in BAD_REQUESTS]
)
def test_bad_input_is_a_4xx_json_error_naming_the_problem(client, text_limit, path, kwargs, status, words):
    response = client.post(path, **fill(kwargs, text_limit))
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert words in response.text
    if status == 413 and path != "/estimate-memory" and "content" not in kwargs:
        assert response.json()["limit"] == text_limit


def test_bad_input_left_no_trace_of_a_crash(client, live):
    assert client.get("/health").status_code == 200
    log = live[1].read_text()
    assert "Traceback" not in log and "Exception in ASGI" not in log


def test_status_stays_responsive_during_synthesis(client):
    stop = threading.Event()

    def synthesize() -> None:
        # Four minutes of audio (length_scale 4): busy for far longer than the polls below take.
        with client.stream("POST", "/tts", data={"text": LONG_UNPUNCTUATED, "length_scale": 4.0}) as response:
            for _ in response.iter_raw():
                if stop.is_set():
                    break

    worker = threading.Thread(target=synthesize)
    worker.start()
    try:
        assert poll(lambda: client.get("/system-status").json()["running_jobs"] == 1, timeout_s=60)
        timings = []
        for path in ["/health", "/system-status"] * 10:
            started = time.perf_counter()
            assert client.get(path).status_code == 200
            timings.append(time.perf_counter() - started)
            time.sleep(0.1)
        assert client.get("/system-status").json()["running_jobs"] == 1  # still synthesizing throughout
    finally:
        stop.set()
        worker.join(timeout=120)
    # The event loop never waits for the model: the slowest status answer is a fraction of a second
    # even with two cores busy synthesizing (and shared with other jobs).
    assert max(timings) < 1.0, timings


# ------------------------------------------------------------------------------------------------
# Admission, on a simulated 8 GB device
# ------------------------------------------------------------------------------------------------


def test_seed_verdicts_follow_the_devices_readings(device):
    """6000 of the device's 8192 MB free and its CPU idle: the estimate fits, the status is safe and
    asks for nothing, and there is nothing to optimize. (First of the device's tests: the readings have
    not moved since the backend started.)"""
    backend, memory = device
    assert memory.available_mb == 6000.0
    with serve_app(create_app(backend, warmup=False)) as url, httpx.Client(base_url=url, timeout=120) as c:
        estimate = c.post("/estimate-memory", data={"text": "Your text here"}).json()
        assert (estimate["status"], estimate["recommendation"]) == ("ok", "OK")
        assert estimate["estimate"]["safe"] is True and estimate["estimate"]["available_mb"] == 6000.0

        status = c.get("/system-status").json()
        assert status["memory_budget_safe"] is True and status["recommended_action"] == ACTION_OK
        assert status["resources"]["cpu_percent"] == 20.0
        assert status["resources"]["memory_percent"] == round(100 * (8192 - 6000) / 8192, 1)
        assert status["resources"]["memory_available_gb"] == round(6000 / 1024, 2)
        assert status["throttling_risk"]["memory_critical"] is False and status["throttling_risk"]["cpu_maxed"] is False

        optimized = c.post("/optimize-for-hardware").json()
        assert optimized["status"] == "optimal", optimized
        assert optimized["config"] == c.get("/hardware").json()["selected_configuration"]


def test_memory_refusal_is_a_503_with_retry_after_and_the_numbers(device):
    backend, memory = device
    memory.available_mb = 200.0  # under the M1 Air's 1.5 GB safety margin
    try:
        app = create_app(backend, retry_after_s=7, warmup=False)
        with serve_app(app) as url, httpx.Client(base_url=url, timeout=120) as c:
            refused = c.post("/tts", data={"text": SHORT})
            assert refused.status_code == 503 and refused.headers["retry-after"] == "7"
            body = refused.json()
            assert body["retry_after_s"] == 7 and "not enough memory" in body["detail"]
            assert body["refusal"]["available_mb"] == 200.0 and body["refusal"]["safety_margin_mb"] == 1536.0
            speech = c.post("/v1/audio/speech", json={"input": SHORT})
            assert speech.status_code == 503 and speech.headers["retry-after"] == "7"
            estimate = c.post("/estimate-memory", data={"text": SHORT}).json()
            assert estimate["status"] == "warning"
            # Refused at the estimate's increment for this text (uncalibrated, every plan needs the same);
            # the two read this process's RSS moments apart
            assert body["refusal"]["required_mb"] == pytest.approx(estimate["estimate"]["required_mb"], abs=50)
            status = c.get("/system-status").json()
            assert status["memory_budget_safe"] is False and status["running_jobs"] == 0
            assert status["queue"]["in_flight"] == 0  # refusals hold nothing
            memory.available_mb = 6000.0
            assert c.post("/tts", data={"text": SHORT}).status_code == 200
    finally:
        memory.available_mb = 6000.0


def test_waits_for_memory_then_runs(tmp_path):
    """Room for one job: a second request waits for the first to finish, then runs; neither fails.

    The backend is calibrated (a fixed increment per request): uncalibrated, a request's increment is the
    seed's peak less this process's RSS, which late in a full test run, with several models loaded, is
    nothing, and then two requests fit where one should."""
    memory = Memory(6000.0)
    backend = simulated_backend(tmp_path, memory)
    for key in backend.candidate_keys():
        constants = EstimatorConstants(current_rss_mb(), 0.0, None, True, None, per_request_mb=200.0)
        backend.estimator.store.save(backend.estimator.machine, key, constants)
    backend.estimator.reload()
    texts = [LONG_UNPUNCTUATED[:150] + ".", LONG_UNPUNCTUATED[150:300] + "."]
    tokens = max(backend.engine.frontend.count_tokens(t) for t in texts)
    increment = backend.estimator.increment_mb(tokens)
    assert increment == pytest.approx(200.0)
    with serve_app(create_app(backend, warmup=False)) as url, httpx.Client(base_url=url, timeout=300) as c:
        memory.available_mb = backend.memory_budget_manager.safety_margin_mb + 1.5 * increment

        def one_runs_one_waits() -> bool:
            status = c.get("/system-status").json()
            return status["queue"]["in_flight"] == 2 and status["running_jobs"] == 1

        try:
            with ThreadPoolExecutor(2) as pool:
                futures = [pool.submit(c.post, "/tts", data={"text": t}) for t in texts]
                waited = poll(one_runs_one_waits, timeout_s=60, every_s=0.1)
                responses = [f.result(timeout=300) for f in futures]
        finally:
            memory.available_mb = 6000.0
            backend.close()
    assert waited
    assert [r.status_code for r in responses] == [200, 200]


@contextmanager
def held_stream(c: httpx.Client, text: str) -> Iterator[None]:
    """A long /tts whose first bytes have arrived (admitted and streaming) until the block ends; then the
    client goes away mid-stream."""
    response = c.send(c.build_request("POST", "/tts", data={"text": text}), stream=True)
    try:
        assert response.status_code == 200
        chunks = response.iter_raw()  # kept referenced: a collected iterator would close the connection
        next(chunks)
        yield
    finally:
        response.close()


def test_full_queue_is_a_503_at_once(device):
    backend, _ = device
    with (
        serve_app(create_app(backend, max_jobs=1, retry_after_s=3, warmup=False)) as url,
        httpx.Client(base_url=url, timeout=300) as c,
    ):
        with held_stream(c, LONG_UNPUNCTUATED[:900]):
            started = time.perf_counter()
            busy = c.post("/tts", data={"text": SHORT})
            assert time.perf_counter() - started < 2.0  # not queued behind the running job
            assert busy.status_code == 503 and busy.headers["retry-after"] == "3"
            assert "busy" in busy.json()["detail"] and "refusal" not in busy.json()
            assert c.get("/health").json()["queue"] == {"in_flight": 1, "max_jobs": 1}
        assert poll(lambda: c.get("/health").json()["queue"]["in_flight"] == 0, timeout_s=60)
        assert c.post("/tts", data={"text": SHORT}).status_code == 200


def test_client_disconnect_stops_synthesis_and_frees_the_reservation(device):
    backend, _ = device
    with serve_app(create_app(backend, warmup=False)) as url, httpx.Client(base_url=url, timeout=300) as c:

        def idle() -> bool:
            status = c.get("/system-status").json()
            return status["running_jobs"] == 0 and status["queue"]["in_flight"] == 0

        cached = c.get("/system-status").json()["cache"]["entries"]
        with held_stream(c, LONG_UNPUNCTUATED[:700]):  # about 45 s of audio
            assert c.get("/system-status").json()["running_jobs"] == 1
        assert poll(idle, timeout_s=30)  # within a decoder chunk's time, not the rest of the 45 s
        # The generator was closed, not run to its end: a finished synthesis would be in the cache.
        assert c.get("/system-status").json()["cache"]["entries"] == cached


def test_an_unexpected_error_is_a_logged_500_json(device, caplog):
    """The catch-all handler, reached through a route added for the test that fails the way a bug would."""
    app = create_app(device[0], warmup=False)

    @app.get("/bug")
    def bug() -> dict:
        return {}["missing"]

    with serve_app(app) as url, caplog.at_level("ERROR", logger="adaptive_tts.server"):
        response = httpx.get(url + "/bug", timeout=60)
        assert httpx.get(url + "/health", timeout=60).status_code == 200
    assert response.status_code == 500 and response.headers["content-type"] == "application/json"
    assert response.json() == {"detail": "internal error (KeyError); see the server log"}
    assert any("unhandled error in GET /bug" in r.getMessage() and r.exc_info for r in caplog.records)


# ------------------------------------------------------------------------------------------------
# Fuzzing the OpenAPI schema against the live server (last: it re-optimizes and clears the cache)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api_schema(live):
    return schemathesis.openapi.from_url(live[0] + "/openapi.json")


#: Every operation of the service's schema (built without loading a model: the app starts nothing), with
#: the generation modes it has data for: schema-invalid requests need a body to get wrong.
FUZZED = [
    pytest.param(path, method.upper(), mode, id=f"{method.upper()} {path} {mode.value}")
    for path, item in create_app().openapi()["paths"].items()
    for method, operation in item.items()
    for mode in (
        [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if "requestBody" in operation else [GenerationMode.POSITIVE]
    )
]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.mark.parametrize("path, method, mode", FUZZED)
def test_openapi_fuzz_finds_no_server_error(api_schema, path, method, mode):
    """Schema-valid and schema-invalid requests of every operation: never a 5xx, and every reply is one
    the schema documents (status, content type, body)."""

    @given(case=api_schema[path][method].as_strategy(generation_mode=mode))
    @settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def fuzz(case) -> None:
        # Texts are cut to a few words so a generated synthesis takes seconds, not minutes: what is
        # fuzzed is the characters and the fields around them, not the length (the 413 has its test).
        if isinstance(case.body, dict):
            for field in ("text", "input"):
                if isinstance(case.body.get(field), str):
                    case.body[field] = case.body[field][:24]
        response = case.call(timeout=300)
        assert response.status_code < 500, (response.status_code, response.text[:500])
        case.validate_response(response, checks=CHECKS)

    fuzz()
