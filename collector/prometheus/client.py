"""A small client for the Prometheus HTTP API (``/api/v1``), standard library only.

What it does for ``detect --prometheus``:

* authenticates with a bearer token read from a file, or basic auth with the password read
  from a file (never from the command line, where ``ps`` would show it); the
  ``Authorization`` header is not forwarded on a redirect;
* verifies TLS against the system's CA store or a given CA bundle (``--ca-file``);
* bounds every request by a timeout;
* splits a long ``query_range`` so that no request asks for more than Prometheus allows:
  ``(end - start) / step`` at most 11,000 points per series (the server refuses more with
  "exceeded maximum resolution of 11,000 points per timeseries", ``web/api/v1/api.go``), and
  by host when the series times points of one request would exceed ``max_points``, so that
  no response holds more than about ``max_points`` samples (``--query.max-samples`` is
  50,000,000 by default on the server; a response of a million points is about 30 MB of
  JSON). A request the server still refuses as too large (``too many samples``, a query
  timeout) is split in two by host and retried.

Every failure raises :class:`PrometheusError` with ``diagnostics()``: what failed and what a
person can do about it.
"""

from __future__ import annotations

import base64
import logging
import re
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from collector.errors import CollectorError
from core import __version__
from core.errors import ConfigError

_logger = logging.getLogger(__name__)

# Prometheus refuses a range query of more than this many points per series.
MAX_POINTS_PER_SERIES = 11_000
# Samples (series x points) one request may return; about 30 MB of JSON.
DEFAULT_MAX_POINTS = 1_000_000
# Series per host assumed when sizing a request: 8 GPUs, and their series again when a pod
# or job changes within the request's span (each label set is a series of its own).
SERIES_PER_HOST_ESTIMATE = 16
# Error texts of a request the server found too large: split it and ask again.
_TOO_LARGE = ("too many samples", "query timed out", "exceeded maximum resolution", "query processing would load")


class PrometheusError(CollectorError):
    """Prometheus could not be read. ``diagnostics()`` says what to do."""

    def __init__(self, message: str, remedy: str = "") -> None:
        super().__init__(message)
        self.remedy = remedy

    def diagnostics(self) -> str:
        return f"{self}" + (f"\n{self.remedy}" if self.remedy else "")

    def __reduce__(self) -> tuple[type[PrometheusError], tuple[str, str]]:
        # With its remedy, from a pipeline's worker process (collector/prometheus/pipeline.py).
        return (type(self), (str(self), self.remedy))


class TooLargeError(PrometheusError):
    """The server refused a request as too large (too many samples, or it timed out)."""


@dataclass(frozen=True)
class ClientConfig:
    """Where Prometheus is and how to authenticate. Built once in the CLI."""

    url: str
    bearer_token_file: Path | None = None
    basic_auth_user: str | None = None
    basic_auth_password_file: Path | None = None
    ca_file: Path | None = None
    timeout_s: float = 60.0
    max_points: int = DEFAULT_MAX_POINTS


class RangeSeries(msgspec.Struct, gc=False):
    """One series of a range query: its labels and ``[unix seconds, "value"]`` pairs."""

    metric: dict[str, str]
    values: list[tuple[float, str]] = []


class _Data(msgspec.Struct):
    resultType: str  # noqa: N815 (the API's spelling)
    result: list[RangeSeries]


class _QueryResponse(msgspec.Struct):
    status: str
    data: _Data | None = None
    errorType: str | None = None  # noqa: N815
    error: str | None = None
    warnings: list[str] = []


class _ListResponse(msgspec.Struct):
    status: str
    data: list[str] | None = None
    errorType: str | None = None  # noqa: N815
    error: str | None = None


class _ErrorBody(msgspec.Struct):
    status: str = ""
    errorType: str | None = None  # noqa: N815
    error: str | None = None


def _read_secret(path: Path, what: str) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror or exc}") from exc
    if not text:
        raise ConfigError(f"{what}: {path} is empty")
    return text


class PrometheusClient:
    """Reads ``/api/v1`` of one Prometheus (or a server speaking its API: Thanos, Mimir, VictoriaMetrics)."""

    def __init__(self, cfg: ClientConfig) -> None:
        parsed = urllib.parse.urlsplit(cfg.url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"--prometheus: {cfg.url!r} is not an http:// or https:// URL")
        if cfg.bearer_token_file is not None and cfg.basic_auth_user is not None:
            raise ConfigError("give a bearer token or basic auth, not both")
        if (cfg.basic_auth_user is None) != (cfg.basic_auth_password_file is None):
            raise ConfigError("basic auth needs both --basic-auth-user and --basic-auth-password-file")
        if cfg.timeout_s <= 0:
            raise ConfigError("--timeout-s must be positive")
        if cfg.ca_file is not None and parsed.scheme != "https":
            raise ConfigError("--ca-file is for an https:// Prometheus")
        self.cfg = cfg
        self._base = cfg.url.rstrip("/")
        self._auth: str | None = None
        if cfg.bearer_token_file is not None:
            self._auth = "Bearer " + _read_secret(cfg.bearer_token_file, "--bearer-token-file")
        elif cfg.basic_auth_user is not None and cfg.basic_auth_password_file is not None:
            pw = _read_secret(cfg.basic_auth_password_file, "--basic-auth-password-file")
            token = base64.b64encode(f"{cfg.basic_auth_user}:{pw}".encode()).decode("ascii")
            self._auth = "Basic " + token
        if (
            self._auth is not None
            and parsed.scheme == "http"
            and parsed.hostname not in ("127.0.0.1", "localhost", "::1")
        ):
            _logger.warning("sending credentials to %s over plain http: anyone on the path can read them", cfg.url)
        handlers: list[urllib.request.BaseHandler] = []
        if parsed.scheme == "https":
            ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file is not None else None)
            handlers.append(urllib.request.HTTPSHandler(context=ctx))
        self._opener = urllib.request.build_opener(*handlers)
        self.requests = 0
        self.bytes_read = 0

    # ------------------------------------------------------------------ transport

    def _request(self, path: str, params: Sequence[tuple[str, str]], *, post: bool) -> bytes:
        url = f"{self._base}{path}"
        body = urllib.parse.urlencode(params).encode("ascii")
        if post:
            req = urllib.request.Request(url, data=body, method="POST")
            req.add_header("Content-Type", "application/x-www-form-urlencoded")
        else:
            req = urllib.request.Request(f"{url}?{body.decode('ascii')}", method="GET")
        req.add_header("Accept", "application/json")
        req.add_header("User-Agent", f"gpuaudit-collector/{__version__}")
        if self._auth is not None:
            req.add_unredirected_header("Authorization", self._auth)  # not sent on to a redirect's target
        where = f"{self._base}{path}"
        try:
            with self._opener.open(req, timeout=self.cfg.timeout_s) as resp:
                data: bytes = resp.read()
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc, where) from exc
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise PrometheusError(
                    f"TLS: cannot verify the certificate of {where}: {reason.verify_message}",
                    "Give the CA that signed it with --ca-file (PEM bundle).",
                ) from exc
            if isinstance(reason, ssl.SSLError):
                raise PrometheusError(f"TLS with {where} failed: {reason}") from exc
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise TooLargeError(
                    f"no answer from {where} within {self.cfg.timeout_s:g} s",
                    "Raise --timeout-s, or ask for a shorter span.",
                ) from exc
            raise PrometheusError(
                f"cannot reach Prometheus at {self._base}: {reason}",
                "Check the URL (scheme, host, port, path prefix) and that this host may connect to it.",
            ) from exc
        except TimeoutError as exc:
            raise TooLargeError(
                f"no answer from {where} within {self.cfg.timeout_s:g} s",
                "Raise --timeout-s, or ask for a shorter span.",
            ) from exc
        except OSError as exc:
            raise PrometheusError(f"reading {where} failed: {exc}") from exc
        self.requests += 1
        self.bytes_read += len(data)
        return data

    def _http_error(self, exc: urllib.error.HTTPError, where: str) -> PrometheusError:
        try:
            raw = exc.read()
        except OSError:
            raw = b""
        detail = ""
        try:
            body = msgspec.json.decode(raw, type=_ErrorBody)
            if body.error:
                detail = f"{body.errorType}: {body.error}" if body.errorType else body.error
        except msgspec.DecodeError:
            detail = raw[:200].decode("utf-8", "replace").strip()
        message = f"Prometheus answered HTTP {exc.code} to {where}" + (f": {detail}" if detail else "")
        if exc.code in (401, 403):
            return PrometheusError(
                message,
                "Check the credentials: --bearer-token-file, or --basic-auth-user with --basic-auth-password-file.",
            )
        if exc.code == 404:
            return PrometheusError(message, "Is the URL the Prometheus root (with its path prefix, if any)?")
        low = detail.lower()
        if any(t in low for t in _TOO_LARGE) or exc.code == 503 and "timeout" in low:
            return TooLargeError(message)
        return PrometheusError(message)

    # ------------------------------------------------------------------ API

    def query_range(self, expr: str, start_s: float, end_s: float, step_s: float) -> list[RangeSeries]:
        """``/api/v1/query_range``: one request (the caller keeps it within the limits)."""
        points = int((end_s - start_s) // step_s) + 1
        if points > MAX_POINTS_PER_SERIES:
            raise ValueError(f"{points} points per series is above Prometheus's {MAX_POINTS_PER_SERIES}")
        params = [
            ("query", expr),
            ("start", _num(start_s)),
            ("end", _num(end_s)),
            ("step", _num(step_s)),
            ("timeout", f"{max(1, int(self.cfg.timeout_s))}s"),
        ]
        raw = self._request("/api/v1/query_range", params, post=True)
        try:
            doc = msgspec.json.decode(raw, type=_QueryResponse)
        except msgspec.DecodeError as exc:
            raise PrometheusError(
                f"{self._base}/api/v1/query_range: not a Prometheus API answer ({exc})",
                "Is the URL the Prometheus root (with its path prefix, if any)?",
            ) from exc
        if doc.status != "success" or doc.data is None:
            raise PrometheusError(f"query {expr!r} failed: {doc.errorType}: {doc.error}")
        if doc.data.resultType != "matrix":
            raise PrometheusError(f"query {expr!r}: expected a matrix, got {doc.data.resultType}")
        for w in doc.warnings:
            _logger.warning("Prometheus warns about %r: %s", expr, w)
        return doc.data.result

    def label_values(self, label: str, match: str, start_s: float, end_s: float) -> list[str]:
        """``/api/v1/label/<label>/values`` of the series ``match`` selects over [start, end]."""
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", label):
            raise ConfigError(f"{label!r} is not a Prometheus label name")
        params = [("match[]", match), ("start", _num(start_s)), ("end", _num(end_s))]
        raw = self._request(f"/api/v1/label/{label}/values", params, post=False)
        try:
            doc = msgspec.json.decode(raw, type=_ListResponse)
        except msgspec.DecodeError as exc:
            raise PrometheusError(f"{self._base}/api/v1/label/{label}/values: not a Prometheus API answer") from exc
        if doc.status != "success" or doc.data is None:
            raise PrometheusError(f"label values of {label}: {doc.errorType}: {doc.error}")
        return sorted(doc.data)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.3f}"


# ---------------------------------------------------------------------------
# Splitting a long range into requests the server accepts


@dataclass(frozen=True)
class Chunk:
    """A span of whole windows [start_ms, end_ms) read in one round of requests."""

    start_ms: int
    end_ms: int


def plan_chunks(start_ms: int, end_ms: int, *, window_ms: int, step_ms: int, chunk_ms: int) -> list[Chunk]:
    """Whole windows from the window holding ``start_ms`` to the one holding ``end_ms - 1``,
    in chunks of at most ``chunk_ms`` (rounded down to whole windows) and never more than
    ``MAX_POINTS_PER_SERIES`` steps."""
    if not (step_ms > 0 and window_ms % step_ms == 0):
        raise ValueError(f"step {step_ms} ms must divide the window ({window_ms} ms)")
    if end_ms <= start_ms:
        raise ValueError("end must be after start")
    first = start_ms - start_ms % window_ms
    last = end_ms + (-end_ms) % window_ms
    size = min(chunk_ms, (MAX_POINTS_PER_SERIES - 1) * step_ms)
    size = max(window_ms, size - size % window_ms)
    return [Chunk(t, min(t + size, last)) for t in range(first, last, size)]


def host_batches(hosts: Sequence[str], points_per_series: int, max_points: int) -> Iterator[list[str]]:
    """Hosts in batches whose estimated series x points stay within ``max_points``."""
    per = max(1, max_points // max(1, points_per_series * SERIES_PER_HOST_ESTIMATE))
    for i in range(0, len(hosts), per):
        yield list(hosts[i : i + per])


def regex_alternation(values: Sequence[str]) -> str:
    """A PromQL (RE2) regular expression matching exactly ``values``."""
    return "|".join(re.escape(v) for v in values)


def with_matcher(selector: str, matcher: str) -> str:
    """``metric{a="b"}`` + ``c=~"d"`` -> ``metric{a="b",c=~"d"}``."""
    if selector.endswith("}"):
        inner = selector[selector.index("{") + 1 : -1]
        return selector[: selector.index("{")] + "{" + (inner + "," if inner else "") + matcher + "}"
    return selector + "{" + matcher + "}"


def quote(value: str) -> str:
    """A PromQL string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


__all__ = [
    "Chunk",
    "ClientConfig",
    "PrometheusClient",
    "PrometheusError",
    "RangeSeries",
    "TooLargeError",
    "host_batches",
    "plan_chunks",
    "quote",
    "regex_alternation",
    "with_matcher",
]
