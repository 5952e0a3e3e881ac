"""WebSocket text frames as a server writes them (RFC 6455 section 5.2: final, unmasked, no
extension), a fan-out round's frames (or HTTP/1.1 chunks) for many connections at once, and
many joins of the same items (a round's metadata messages) at once.

``joined_frames`` and ``joined_lists`` are written twice: in C (``_wsframes.c``, built with the
package where a compiler is found) and in Python below, the contract and the fallback. The
tests check that both give the same bytes."""

from __future__ import annotations


def text_frame(message: bytes) -> bytes:
    """``message`` (UTF-8 text) as one final, unmasked text frame: a server's frame without
    extensions, the same bytes for every connection."""
    n = len(message)
    if n < 126:
        return b"\x81%c%s" % (n, message)
    if n < 65536:
        return b"\x81\x7e%s%s" % (n.to_bytes(2, "big"), message)
    return b"\x81\x7f%s%s" % (n.to_bytes(8, "big"), message)


def joined_frames_py(
    rows: list[bytes],
    picked: bytes,
    los: list[int],
    his: list[int],
    cursors: list[int] | None,
    before: list[bytes | None],
    prefix: bytes,
    infix: bytes,
    tail: bytes,
    trim: int,
    chunked: bool = False,
    /,
) -> list[bytes]:
    """One bytes object per connection ``i``: the text frame of ``before[i]`` (if not None),
    then the text frame of ``prefix + str(cursors[i]) + infix + the rows joined + tail``, the
    last ``trim`` bytes of the joined rows left out (no cursor if ``cursors`` is None).
    Connection ``i``'s rows are ``rows[r]`` for ``r`` in ``picked[los[i]:his[i]]``
    (``picked``: native int64 values, as ``ndarray.tobytes`` gives them); each connection has
    at least one. ``chunked``: one HTTP/1.1 chunk (RFC 9112 section 7.1) instead, of
    ``before[i]`` and the message together; it must not be empty (that would end the body)."""
    if trim < 0:
        raise ValueError("trim must not be negative")
    numbers_of = [0] * len(los) if cursors is None else cursors
    if not len(los) == len(his) == len(numbers_of) == len(before):
        raise ValueError("los, his, cursors and before differ in length")
    if len(picked) % 8:
        raise ValueError("picked is not a whole number of int64 values")
    numbers = memoryview(picked).cast("q")
    out: list[bytes] = []
    for i, (lo, hi, cursor, lead) in enumerate(zip(los, his, numbers_of, before, strict=True)):
        if lo < 0 or hi > len(numbers) or lo >= hi:
            raise ValueError(f"connection {i}: rows [{lo}, {hi}) out of picked's {len(numbers)}")
        for r in numbers[lo:hi]:
            if not 0 <= r < len(rows):
                raise IndexError(f"picked: {r}: no such row")
        if lead is not None and not isinstance(lead, bytes):
            raise TypeError(f"before[{i}] is neither bytes nor None")
        joined = b"".join([rows[r] for r in numbers[lo:hi]])
        if len(joined) < trim:
            raise ValueError(f"connection {i}: rows shorter than trim")
        number = b"" if cursors is None else b"%d" % cursor
        data = b"%s%s%s%s%s" % (prefix, number, infix, joined[: len(joined) - trim], tail)
        if chunked:
            body = data if lead is None else lead + data
            if not body:
                raise ValueError(f"connection {i}: an empty chunk")
            out.append(b"%x\r\n%s\r\n" % (len(body), body))
        else:
            frame = text_frame(data)
            out.append(frame if lead is None else text_frame(lead) + frame)
    return out


def joined_lists_py(
    items: list[bytes | None],
    picked: bytes,
    los: list[int],
    his: list[int],
    prefix: bytes,
    sep: bytes,
    tail: bytes,
    /,
) -> list[bytes]:
    """One bytes object per list ``i``: ``prefix + sep.join(items[r] for r in
    picked[los[i]:his[i]]) + tail`` (``picked``: native int64 values, as ``ndarray.tobytes``
    gives them; a list may be empty). The items a list names must be bytes; the others may be
    None."""
    if len(los) != len(his):
        raise ValueError("los and his differ in length")
    if len(picked) % 8:
        raise ValueError("picked is not a whole number of int64 values")
    numbers = memoryview(picked).cast("q")
    out: list[bytes] = []
    for i, (lo, hi) in enumerate(zip(los, his, strict=True)):
        if lo < 0 or hi > len(numbers) or lo > hi:
            raise ValueError(f"list {i}: items [{lo}, {hi}) out of picked's {len(numbers)}")
        chosen = []
        for r in numbers[lo:hi]:
            if not 0 <= r < len(items):
                raise IndexError(f"picked: {r}: no such item")
            item = items[r]
            if not isinstance(item, bytes):
                raise TypeError(f"items[{r}] is not bytes")
            chosen.append(item)
        out.append(prefix + sep.join(chosen) + tail)
    return out


try:
    from streamgauge.wire._wsframes import joined_frames as joined_frames
    from streamgauge.wire._wsframes import joined_lists as joined_lists
except ImportError:  # not built (no compiler where the package was installed)
    joined_frames = joined_frames_py
    joined_lists = joined_lists_py
