"""The Prometheus client against a tiny local fake of the HTTP API (http.server on 127.0.0.1:0):
authentication, a private CA, timeouts, error answers, and requests split to fit the limits."""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from collector.ca import init_ca, issue
from collector.prometheus.client import (
    MAX_POINTS_PER_SERIES,
    ClientConfig,
    PrometheusClient,
    PrometheusError,
    TooLargeError,
    plan_chunks,
)
from collector.prometheus.source import PrometheusHistory, Span
from collector.prometheus.windows import WindowBuilder
from core.errors import ConfigError
from core.tenantrules import TenantRules

T0 = 1_772_424_000_000

Handler = Callable[[BaseHTTPRequestHandler, str, dict[str, list[str]]], tuple[int, Any]]


class FakePrometheus:
    """Answers /api/v1 requests with ``handler(request, path, params) -> (status, JSON body)``;
    records every request's path, parameters and Authorization header."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[tuple[str, dict[str, list[str]], str | None]] = []
        fake = self

        class H(BaseHTTPRequestHandler):
            def _answer(self, params: dict[str, list[str]]) -> None:
                path = urllib.parse.urlsplit(self.path).path
                fake.requests.append((path, params, self.headers.get("Authorization")))
                status, body = handler(self, path, params)
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                self._answer(urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query))

            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("Content-Length", "0"))
                self._answer(urllib.parse.parse_qs(self.rfile.read(n).decode()))

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[Callable[..., FakePrometheus]]:
    made: list[FakePrometheus] = []

    def make(handler: Handler, tls: ssl.SSLContext | None = None) -> FakePrometheus:
        f = FakePrometheus(handler, tls)
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()


def matrix(result: list[dict[str, Any]]) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "matrix", "result": result}}


def empty(_: BaseHTTPRequestHandler, path: str, params: dict[str, list[str]]) -> tuple[int, Any]:
    if path.startswith("/api/v1/label/"):
        return 200, {"status": "success", "data": ["n1"]}
    return 200, matrix([])


def test_bearer_token_from_a_file_is_sent(tmp_path: Path, fake: Callable[..., FakePrometheus]) -> None:
    f = fake(empty)
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    c = PrometheusClient(ClientConfig(f.url, bearer_token_file=token))
    assert c.query_range("up", 0, 60, 30) == []
    assert f.requests[0][2] == "Bearer s3cret"
    assert f.requests[0][1]["query"] == ["up"] and f.requests[0][1]["step"] == ["30"]


def test_basic_auth_password_from_a_file_is_sent(tmp_path: Path, fake: Callable[..., FakePrometheus]) -> None:
    f = fake(empty)
    pw = tmp_path / "pw"
    pw.write_text("hunter2")
    c = PrometheusClient(ClientConfig(f.url, basic_auth_user="ops", basic_auth_password_file=pw))
    assert c.label_values("Hostname", "up", 0, 60) == ["n1"]
    assert f.requests[0][2] == "Basic " + base64.b64encode(b"ops:hunter2").decode()


def test_refused_credentials_say_what_to_check(fake: Callable[..., FakePrometheus]) -> None:
    f = fake(lambda h, p, q: (401, b"Unauthorized"))
    with pytest.raises(PrometheusError) as e:
        PrometheusClient(ClientConfig(f.url)).query_range("up", 0, 60, 30)
    assert "401" in str(e.value) and "--bearer-token-file" in e.value.diagnostics()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"url": "ftp://x"}, "not an http"),
        ({"basic_auth_user": "u"}, "both"),
        ({"ca_file": Path("/x")}, "https"),
        ({"timeout_s": 0.0}, "positive"),
        ({"bearer_token_file": Path("/nonexistent/token")}, "cannot read"),
    ],
)
def test_configuration_errors_are_config_errors(kw: dict[str, Any], match: str) -> None:
    args = {"url": "http://127.0.0.1:9"} | kw
    with pytest.raises(ConfigError, match=match):
        PrometheusClient(ClientConfig(**args))


def test_an_api_error_is_reported_with_its_text(fake: Callable[..., FakePrometheus]) -> None:
    body = {"status": "error", "errorType": "bad_data", "error": 'parse error: unexpected "}"'}
    f = fake(lambda h, p, q: (400, body))
    with pytest.raises(PrometheusError, match="bad_data: parse error") as e:
        PrometheusClient(ClientConfig(f.url)).query_range("up{", 0, 60, 30)
    assert not isinstance(e.value, TooLargeError)


def test_too_many_samples_is_a_too_large_error(fake: Callable[..., FakePrometheus]) -> None:
    body = {"status": "error", "errorType": "execution", "error": "query processing would load too many samples"}
    f = fake(lambda h, p, q: (422, body))
    with pytest.raises(TooLargeError):
        PrometheusClient(ClientConfig(f.url)).query_range("up", 0, 60, 30)


def test_not_a_prometheus_answer(fake: Callable[..., FakePrometheus]) -> None:
    f = fake(lambda h, p, q: (200, b"<html>login</html>"))
    with pytest.raises(PrometheusError, match="not a Prometheus API answer"):
        PrometheusClient(ClientConfig(f.url)).query_range("up", 0, 60, 30)


def test_unreachable_prometheus_says_so() -> None:
    with pytest.raises(PrometheusError, match="cannot reach Prometheus"):
        PrometheusClient(ClientConfig("http://127.0.0.1:9", timeout_s=2)).query_range("up", 0, 60, 30)


def test_a_slow_answer_times_out(fake: Callable[..., FakePrometheus]) -> None:
    def slow(h: BaseHTTPRequestHandler, p: str, q: dict[str, list[str]]) -> tuple[int, Any]:
        time.sleep(1.5)
        return 200, matrix([])

    f = fake(slow)
    t = time.monotonic()
    with pytest.raises(TooLargeError, match="within 0.3 s"):
        PrometheusClient(ClientConfig(f.url, timeout_s=0.3)).query_range("up", 0, 60, 30)
    assert time.monotonic() - t < 1.4


def test_tls_with_a_private_ca(tmp_path: Path, fake: Callable[..., FakePrometheus]) -> None:
    ca_cert = init_ca(tmp_path / "ca", "test CA")
    server = issue(tmp_path / "ca", "127.0.0.1", server=True, hosts=("127.0.0.1",), days=2)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(server.cert, server.key)
    f = fake(empty, tls=ctx)
    assert PrometheusClient(ClientConfig(f.url, ca_file=ca_cert)).query_range("up", 0, 60, 30) == []
    with pytest.raises(PrometheusError) as e:
        PrometheusClient(ClientConfig(f.url)).query_range("up", 0, 60, 30)
    assert "certificate" in str(e.value) and "--ca-file" in e.value.diagnostics()


# ---------------------------------------------------------------------------
# Splitting a span into requests the server accepts


def test_chunks_are_whole_windows_within_the_points_limit() -> None:
    month = 30 * 86_400_000
    chunks = plan_chunks(T0 + 1234, T0 + month, window_ms=60_000, step_ms=1000, chunk_ms=10**12)
    assert chunks[0].start_ms == T0 and chunks[-1].end_ms == T0 + month
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert a.end_ms == b.start_ms
    for c in chunks:
        assert c.start_ms % 60_000 == 0 and c.end_ms % 60_000 == 0
        assert (c.end_ms - c.start_ms) // 1000 + 1 <= MAX_POINTS_PER_SERIES
    hourly = plan_chunks(T0, T0 + 3 * 3_600_000 + 60_000, window_ms=60_000, step_ms=30_000, chunk_ms=3_600_000)
    assert [c.end_ms - c.start_ms for c in hourly] == [3_600_000] * 3 + [60_000]


def _site(hosts: list[str], refuse_above: int | None = None) -> Handler:
    """A fake site of ``hosts`` with one GPU each at 50% utilisation; refuses a query naming
    more than ``refuse_above`` hosts as too large."""

    def handler(h: BaseHTTPRequestHandler, path: str, params: dict[str, list[str]]) -> tuple[int, Any]:
        if path == "/api/v1/label/Hostname/values":
            return 200, {"status": "success", "data": hosts}
        if path.startswith("/api/v1/label/"):
            return 200, {"status": "success", "data": []}
        q = params["query"][0]
        named = [x for x in hosts if x in q] if "=~" in q else hosts
        if refuse_above is not None and len(named) > refuse_above:
            body = {
                "status": "error",
                "errorType": "execution",
                "error": "query processing would load too many samples",
            }
            return 422, body
        if "GPU_UTIL" not in q:
            return 200, matrix([])
        start, end, step = (float(params[k][0]) for k in ("start", "end", "step"))
        n = int(round((end - start) / step)) + 1
        return 200, matrix(
            [
                {
                    "metric": {"Hostname": x, "UUID": f"GPU-{x}", "gpu": "0", "modelName": "NVIDIA H100 80GB HBM3"},
                    "values": [[round(start + k * step, 3), "50"] for k in range(n)],
                }
                for x in named
            ]
        )

    return handler


def test_a_large_site_is_read_in_host_batches(fake: Callable[..., FakePrometheus]) -> None:
    hosts = [f"n{i:03d}" for i in range(40)]
    f = fake(_site(hosts))
    # 120 points per series and chunk, 16 series per host assumed: 5 hosts per request.
    c = PrometheusClient(ClientConfig(f.url, max_points=120 * 16 * 5))
    h = PrometheusHistory(c, WindowBuilder(TenantRules(), step_ms=30_000), Span(T0, T0 + 3_600_000, 30_000))
    windows = [w for ws in h.windows() for w in ws]
    assert len(windows) == 40 * 60
    util_requests = [r for r in f.requests if r[0] == "/api/v1/query_range" and "GPU_UTIL" in r[1]["query"][0]]
    assert len(util_requests) == 8
    assert all(q[1]["query"][0].count("|") == 4 for q in util_requests)


def test_a_request_refused_as_too_large_is_split_and_retried(fake: Callable[..., FakePrometheus]) -> None:
    hosts = [f"n{i:03d}" for i in range(8)]
    f = fake(_site(hosts, refuse_above=2))
    c = PrometheusClient(ClientConfig(f.url, max_points=120 * 16 * 4))  # batches of 4 hosts; the server takes 2
    h = PrometheusHistory(c, WindowBuilder(TenantRules(), step_ms=30_000), Span(T0, T0 + 3_600_000, 30_000))
    windows = [w for ws in h.windows() for w in ws]
    assert {w.node_id for w in windows} == set(hosts)
    assert h.coverage.splits == 2 * 9, "each of the 2 batches split once, for each of the 9 queries"


def test_no_series_at_all_is_an_error_that_says_what_to_check(fake: Callable[..., FakePrometheus]) -> None:
    f = fake(lambda h, p, q: (200, {"status": "success", "data": []}))
    c = PrometheusClient(ClientConfig(f.url))
    h = PrometheusHistory(c, WindowBuilder(TenantRules(), step_ms=30_000), Span(T0, T0 + 3_600_000, 30_000))
    with pytest.raises(PrometheusError) as e:
        next(h.windows())
    assert "--label-map host=" in e.value.diagnostics()
