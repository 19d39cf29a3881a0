"""Key rotation on a running agent (docs/formats.md, "Key rotation").

``gpuaudit-agent rotate-key`` creates the next key beside the current one
(``<key>.next``, mode 0600). The running agent notices it before its next window:
``ChainSigner.rotate`` makes the old key sign that window as its last statement, naming
the new key; then the new key file replaces the old one (the old private key is gone),
the old key's stream drains, and a stream for the new key starts. The collector enrolls
the new key from the hand-over statement, without a join token.

If the agent stops between signing the hand-over and replacing the key file, the next
start finishes the replacement (``resume_rotation``): the spool records the hand-over.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from urllib.parse import urlparse

import grpc

from agent.signing import ChainSigner
from agent.spool import Spool
from agent.stream import NodeStream, RejectedError
from attestation.keys import Signer, create_key_file, load_key_file

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


def request_rotation(uri: str) -> Signer:
    """Create the next key (0600) for the running agent to rotate to. Refuses to overwrite."""
    nxt = next_key_path(uri)
    if nxt is None:
        raise ValueError(f"key {uri!r} is not a file: key; rotate it with its own backend")
    return create_key_file(nxt)


def resume_rotation(uri: str, signer: Signer, spool: Spool) -> Signer:
    """Finish a rotation interrupted after the hand-over was signed; return the key to use."""
    path, nxt = key_path(uri), next_key_path(uri)
    if path is None or nxt is None or not nxt.exists():
        return signer
    new = load_key_file(nxt)
    if spool.get_meta(f"rotated_from/{new.key_id}") is None:
        return signer  # requested, not yet handed over: the loop rotates at the next window
    os.replace(nxt, path)
    spool.set_meta("enrolled_key_id", new.key_id)
    _logger.warning("finished an interrupted key rotation: now signing with %s", new.key_id)
    return new


def maybe_rotate(chain: ChainSigner, uri: str) -> None:
    """Start a rotation when ``<key>.next`` appeared (cheap: one stat per call)."""
    nxt = next_key_path(uri)
    if nxt is None or chain.rotating or not nxt.exists():
        return
    new = load_key_file(nxt)
    if new.key_id == chain.signer.key_id:
        return
    _logger.info("rotating the signing key to %s at the next window", new.key_id)
    chain.rotate(new)


def finish_rotation(uri: str, spool: Spool, new: Signer) -> None:
    """After the hand-over is spooled: the new key file replaces the old one."""
    path, nxt = key_path(uri), next_key_path(uri)
    if path is not None and nxt is not None and nxt.exists():
        os.replace(nxt, path)
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
