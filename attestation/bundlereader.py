"""Reading a vendor bundle a piece at a time, so that memory does not grow with its size.

A bundle is one JSON object (docs/formats.md, "Vendor bundle v1") whose ``entries`` array
holds nearly all of its bytes. ``BundleSource`` finds the byte range of each top-level
member and of each element of ``entries`` with a structural scan (strings, escapes and
brackets only: a regular expression jumps over the long base64 strings), and each piece
is then parsed on its own by ``attestation.strictjson``, so the bundle is held to the same
rules as before, piece by piece: JSON that every parser reads alike (a member name twice
in the top-level object is refused here; anywhere below, by strictjson).

The bytes may be a ``bytes`` object or a read-only ``mmap`` of the file; for an mmap, the
pages already read are given back to the kernel as the scan moves on (``madvise``), so
the verifier's resident memory stays far below the file's size.
"""

from __future__ import annotations

import mmap
import re
from array import array
from collections.abc import Iterator
from typing import Any

from attestation import strictjson
from attestation.errors import Error

_WS = re.compile(rb"[ \t\n\r]*")
_STRUCT = re.compile(rb'["\\{}\[\]]')
_SCALAR = re.compile(rb"[-+0-9A-Za-z.]*")
_RELEASE_BYTES = 64 << 20  # give pages back every 64 MiB read
_BOM = b"\xef\xbb\xbf"


class ReadError(Error, ValueError):
    """The bundle's bytes are not one well-formed JSON object (with what is wrong and where)."""

    reason = "bundle_unreadable"


def _where(i: int) -> str:
    return f"at byte {i:,}"


class BundleSource:
    """The top-level members of a bundle and the elements of its ``entries``, as byte ranges."""

    def __init__(self, buf: bytes | mmap.mmap) -> None:
        self._buf = buf
        self._released = 0
        self.members: dict[str, tuple[int, int]] = {}
        self._entries = array("q")  # start, end of each element of "entries"
        self.entries_is_list = False
        self._scan()

    # -- the structural scan ----------------------------------------------------------

    def _release(self, upto: int) -> None:
        """Give the pages before ``upto`` back (an mmap only; they are read again if needed)."""
        if not isinstance(self._buf, mmap.mmap) or upto - self._released < _RELEASE_BYTES:
            return
        start = self._released - self._released % mmap.PAGESIZE
        end = upto - upto % mmap.PAGESIZE
        if end > start and hasattr(mmap, "MADV_DONTNEED"):
            try:
                self._buf.madvise(mmap.MADV_DONTNEED, start, end - start)
            except (OSError, ValueError):  # advice only
                pass
        self._released = end

    def _ws(self, i: int) -> int:
        m = _WS.match(self._buf, i)
        return m.end() if m is not None else i

    def _expect(self, i: int, what: bytes) -> int:
        if self._buf[i : i + 1] != what:
            got = self._buf[i : i + 1]
            shown = "the end of the file" if not got else repr(got.decode("latin-1"))
            raise ReadError(f"expected {what.decode()!r} {_where(i)}, found {shown} (truncated or damaged?)")
        return i + 1

    def _string_end(self, i: int) -> int:
        """The end of the string whose opening quote is at ``i`` (memchr-fast: a quote is
        found with ``find``, then the backslashes before it are counted)."""
        buf, j = self._buf, i + 1
        while True:
            k = buf.find(b'"', j)
            if k < 0:
                raise ReadError(f"a string starting {_where(i)} does not end (truncated?)")
            b = k - 1
            while b > i and buf[b] == 0x5C:
                b -= 1
            if (k - 1 - b) % 2 == 0:  # an even number of backslashes: the quote ends the string
                return k + 1
            j = k + 1

    def _value_end(self, i: int) -> int:
        buf = self._buf
        c = buf[i : i + 1]
        if c == b'"':
            return self._string_end(i)
        if c in (b"{", b"["):
            depth, j = 0, i
            search = _STRUCT.search
            while True:
                m = search(buf, j)
                if m is None:
                    raise ReadError(f"the value starting {_where(i)} does not end (truncated?)")
                k = m.start()
                ch = buf[k]
                if ch == 0x22:
                    j = self._string_end(k)
                    continue
                if ch == 0x5C:
                    raise ReadError(f"a backslash outside a string {_where(k)}")
                depth += 1 if ch in (0x7B, 0x5B) else -1
                j = k + 1
                if depth == 0:
                    return j
        m = _SCALAR.match(buf, i)
        end = m.end() if m is not None else i
        if end == i:
            raise ReadError(f"expected a JSON value {_where(i)} (truncated or damaged?)")
        return end

    def _scan(self) -> None:
        buf = self._buf
        if buf[:3] == _BOM:
            raise ReadError("the bundle starts with a byte-order mark (RFC 8259 §8.1: senders MUST NOT add one)")
        i = self._expect(self._ws(0), b"{")
        i = self._ws(i)
        if buf[i : i + 1] == b"}":
            i += 1
        else:
            while True:
                end = self._string_end(self._expect(i, b'"') - 1)
                try:
                    name = strictjson.loads(bytes(buf[i:end]))
                except (ValueError, RecursionError) as exc:
                    raise ReadError(f"a member name {_where(i)} is not a JSON string: {exc}") from exc
                if name in self.members:
                    raise ReadError(
                        f"the member {ascii(name)[:60]} appears twice: JSON parsers differ on which they keep"
                    )
                i = self._ws(self._expect(self._ws(end), b":"))
                start = i
                if name == "entries" and buf[i : i + 1] == b"[":
                    i = self._scan_entries(i)
                else:
                    i = self._value_end(i)
                self.members[name] = (start, i)
                i = self._ws(i)
                if buf[i : i + 1] == b",":
                    i = self._ws(i + 1)
                    continue
                i = self._expect(i, b"}")
                break
        i = self._ws(i)
        if i != len(buf):
            raise ReadError(f"data after the bundle's closing brace {_where(i)}")
        self._release(len(buf))

    def _scan_entries(self, i: int) -> int:
        self.entries_is_list = True
        i = self._ws(i + 1)
        if self._buf[i : i + 1] == b"]":
            return i + 1
        while True:
            end = self._value_end(i)
            self._entries.append(i)
            self._entries.append(end)
            self._release(end)
            i = self._ws(end)
            if self._buf[i : i + 1] == b",":
                i = self._ws(i + 1)
                continue
            return self._expect(i, b"]")

    # -- the pieces ---------------------------------------------------------------------

    def member(self, name: str, default: Any = None) -> Any:
        """The member ``name`` parsed (strictjson), or ``default`` when the bundle lacks it.
        Raises ValueError (strictjson.NotIJSONError) or RecursionError."""
        span = self.members.get(name)
        if span is None:
            return default
        if name == "entries" and self.entries_is_list:
            raise ValueError("entries are read one at a time (entries())")
        return strictjson.loads(bytes(self._buf[span[0] : span[1]]))

    def check_members(self, skip: tuple[str, ...]) -> None:
        """Parse every member not in ``skip`` (unknown ones too): ambiguous JSON anywhere is refused."""
        for name in self.members:
            if name not in skip and not (name == "entries" and self.entries_is_list):
                self.member(name)

    def __len__(self) -> int:
        return len(self._entries) // 2

    def entries(self) -> Iterator[Any]:
        """Each element of ``entries``, parsed (strictjson), in order. Raises ValueError or
        RecursionError for an element that is not JSON every parser reads alike."""
        self._released = 0
        for k in range(0, len(self._entries), 2):
            start, end = self._entries[k], self._entries[k + 1]
            raw = bytes(self._buf[start:end])
            self._release(end)
            yield strictjson.loads(raw)
