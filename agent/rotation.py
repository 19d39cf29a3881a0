"""Key rotation on a running agent (docs/formats.md, "Key rotation").

``gpuaudit-agent rotate-key`` creates the next key beside the current one
(``<key>.next``, mode 0600). The running agent notices it before its next window:
``ChainSigner.rotate`` makes the old key sign that window as its last statement, naming
the new key; then the new key file replaces the old one (the old private key is gone),
the old key's stream drains, and a stream for the new key starts. The collector enrolls
the new key from the hand-over statement, without a join token.

With ``key_rotation_days`` set, the agent asks for the next key itself
(``RotationSchedule``) once its key has signed for that long, and the same path follows.

Crash safety, step by step:

1. ``<key>.next`` appears atomically (written to a temporary file, fsynced, linked into
   place without overwriting): a crash leaves either no next key or a whole one, never
   a truncated file. Until the hand-over is signed the next key is not live: the
   collector knows nothing of it, and a restart picks the request up again.
2. The hand-over statement, the new chain's link to it (``rotated_from``, ``epoch``) and
   the new key's enrollment are written to the spool in one transaction
   (agent/signing.py): there is never a spooled hand-over without the link, or the reverse.
3. The new key file replaces the old one (``os.replace``, atomic). If the agent stops
   between 2 and 3, the next start finishes the replacement (``resume_rotation``).
4. The old key's statements still in the spool (the hand-over among them) are streamed
   before the new key's (``start_streams``, ``switch_stream``): the collector can only
   accept the new chain after the hand-over that enrolls its key.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import grpc

from agent.signing import ChainSigner
from agent.spool import Spool
from agent.stream import NodeStream, RejectedError
from attestation.errors import KeyFileError
from attestation.keys import Ed25519Signer, Signer, load_key_file

MS_PER_DAY = 86_400_000

_logger = logging.getLogger(__name__)


def key_path(uri: str) -> Path | None:
    """The key file of a ``file:`` key URI; None for other backends (they rotate their own way)."""
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        return None
    raw = parsed.path if parsed.netloc == "" else parsed.netloc + parsed.path
    return Path(raw) if raw else None


def next_key_path(uri: str) -> Path | None:
    path = key_path(uri)
    return None if path is None else path.with_name(path.name + ".next")


def create_next_key(path: Path) -> Ed25519Signer:
    """Create a new Ed25519 key at ``path`` (0600), atomically; refuse to overwrite."""
    signer = Ed25519Signer.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(signer.private_pem())
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # fails if ``path`` exists: never replaces a key
        except FileExistsError as exc:
            raise KeyFileError(f"{path} already exists; refusing to overwrite a key") from exc
    finally:
        os.unlink(tmp)
    _fsync_dir(path.parent)
    return signer


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def request_rotation(uri: str) -> Signer:
    """Create the next key (0600) for the running agent to rotate to. Refuses to overwrite."""
    nxt = next_key_path(uri)
    if nxt is None:
        raise ValueError(f"key {uri!r} is not a file: key; rotate it with its own backend")
    return create_next_key(nxt)


def resume_rotation(uri: str, signer: Signer, spool: Spool) -> Signer:
    """Finish a rotation interrupted after the hand-over was signed; return the key to use."""
    path, nxt = key_path(uri), next_key_path(uri)
    if path is None or nxt is None or not nxt.exists():
        return signer
    try:
        new = load_key_file(nxt)
    except KeyFileError as exc:
        # Not handed over (a whole key is linked into place, never a partial one): leave it to maybe_rotate.
        _logger.error("the next key %s cannot be used: %s", nxt, exc)
        return signer
    if spool.get_meta(f"rotated_from/{new.key_id}") is None:
        return signer  # requested, not yet handed over: the loop rotates at the next window
    os.replace(nxt, path)
    _fsync_dir(path.parent)
    spool.set_meta("enrolled_key_id", new.key_id)
    _logger.warning("finished an interrupted key rotation: now signing with %s", new.key_id)
    return new


def maybe_rotate(chain: ChainSigner, uri: str, reported: set[str] | None = None) -> None:
    """Start a rotation when ``<key>.next`` appeared (cheap: one stat per call).

    A next key that cannot be loaded (wrong mode, not a key) is logged, once per problem
    when ``reported`` is given, and the current key goes on signing."""
    nxt = next_key_path(uri)
    if nxt is None or chain.rotating or not nxt.exists():
        return
    try:
        new = load_key_file(nxt)
    except KeyFileError as exc:
        if reported is None or str(exc) not in reported:
            if reported is not None:
                reported.add(str(exc))
            _logger.error("not rotating the signing key: %s; fix or remove that file", exc)
        return
    if new.key_id == chain.signer.key_id:
        return
    _logger.info("rotating the signing key to %s at the next window", new.key_id)
    chain.rotate(new)


class RotationSchedule:
    """Rotates the signing key every ``period_days`` (0: never), through ``<key>.next``.

    The period runs from the window the key signed first (``ChainSigner.key_since_ms``,
    kept in the spool, so restarts do not reset it). When it has passed, ``tick`` creates
    ``<key>.next`` exactly as ``gpuaudit-agent rotate-key`` does, and ``maybe_rotate``
    hands over at the next window. A next key that already exists (a manual request, or
    one from before a restart) is used as it is.
    """

    def __init__(self, uri: str, period_days: float) -> None:
        self.uri = uri
        self.period_ms = int(period_days * MS_PER_DAY) if period_days > 0 else 0
        self._warned = False
        self._reported: set[str] = set()

    @property
    def period_s(self) -> float | None:
        """The period in seconds when keys rotate on this schedule (``key_rotation_days`` > 0
        and a ``file:`` key); None when they do not (agent/metrics.py exports it)."""
        if not self.period_ms or next_key_path(self.uri) is None:
            return None
        return self.period_ms / 1000

    def check(self, chain: ChainSigner, now_ms: int) -> None:
        """Before each window: ask for the next key when due, and hand over to a requested one."""
        self.tick(chain, now_ms)
        maybe_rotate(chain, self.uri, self._reported)

    def due(self, chain: ChainSigner, now_ms: int) -> bool:
        since = chain.key_since_ms
        return bool(self.period_ms) and since is not None and now_ms - since >= self.period_ms

    def tick(self, chain: ChainSigner, now_ms: int) -> None:
        if not self.period_ms or chain.rotating or not self.due(chain, now_ms):
            return
        nxt = next_key_path(self.uri)
        if nxt is None:
            if not self._warned:
                self._warned = True
                _logger.warning("key_rotation_days: key %s is not a file: key; it is not rotated", self.uri)
            return
        if nxt.exists():
            return  # requested already: maybe_rotate hands over to it
        try:
            new = create_next_key(nxt)
        except (KeyFileError, OSError) as exc:
            if not self._warned:
                self._warned = True
                _logger.error("scheduled key rotation: cannot create %s: %s", nxt, exc)
            return
        self._warned = False
        age_days = (now_ms - (chain.key_since_ms or now_ms)) / MS_PER_DAY
        _logger.info(
            "key %s has signed for %.1f days (key_rotation_days): rotating to %s",
            chain.signer.key_id,
            age_days,
            new.key_id,
        )


def finish_rotation(uri: str, spool: Spool, new: Signer) -> None:
    """After the hand-over is spooled: the new key file replaces the old one."""
    path, nxt = key_path(uri), next_key_path(uri)
    if path is not None and nxt is not None and nxt.exists():
        os.replace(nxt, path)
        _fsync_dir(path.parent)
    # Enrolled by the hand-over statement (the collector needs no join token for it).
    spool.set_meta("enrolled_key_id", new.key_id)


def switch_stream(
    channel: grpc.aio.Channel,
    node_id: str,
    key_id: str,
    spool: Spool,
    old: NodeStream,
    old_task: asyncio.Task[None] | None,
) -> tuple[NodeStream, asyncio.Task[None]]:
    """Drain the old key's stream (its last statement enrolls the new key), then stream the new key's."""
    old.close_when_drained()
    new = NodeStream(channel, node_id, key_id, spool)
    new.latest_checkpoint = old.latest_checkpoint

    async def after_old() -> None:
        if old_task is not None:
            try:
                await old_task
            except (RejectedError, grpc.aio.AioRpcError) as exc:
                # E.g. the old key was retired before a resend: what it signed is stored or in the spool.
                _logger.error("the old key's stream ended: %s; streaming with the new key", exc)
        await new.run()

    return new, asyncio.create_task(after_old(), name="stream")


def predecessors_pending(spool: Spool, key_id: str) -> list[str]:
    """The keys ``key_id``'s chain was handed over from whose statements are still in the
    spool (the agent stopped before they were acknowledged), oldest first."""
    out: list[str] = []
    seen = {key_id}
    current = key_id
    while True:
        link = spool.get_meta(f"rotated_from/{current}")
        previous = link.split(" ")[0] if link else None
        if previous is None or previous in seen or spool.count(previous) == 0:
            break
        seen.add(previous)
        out.append(previous)
        current = previous
    return out[::-1]


def start_streams(
    channel: grpc.aio.Channel, node_id: str, key_id: str, spool: Spool
) -> tuple[NodeStream, asyncio.Task[None]]:
    """The stream for ``key_id``, started after the streams of the keys it was handed over
    from have drained what the spool holds of theirs (their last statement enrolls the next key)."""
    stream: NodeStream | None = None
    task: asyncio.Task[None] | None = None
    for old_id in predecessors_pending(spool, key_id):
        _logger.warning(
            "%d statement(s) of the previous key %s are still spooled; sending them first", spool.count(old_id), old_id
        )
        if stream is None:
            stream = NodeStream(channel, node_id, old_id, spool)
            task = asyncio.create_task(stream.run(), name="stream")
        else:
            stream, task = switch_stream(channel, node_id, old_id, spool, stream, task)
    if stream is None:
        stream = NodeStream(channel, node_id, key_id, spool)
        return stream, asyncio.create_task(stream.run(), name="stream")
    return switch_stream(channel, node_id, key_id, spool, stream, task)
