def joined_frames(
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
) -> list[bytes]: ...
def joined_lists(
    items: list[bytes | None],
    picked: bytes,
    los: list[int],
    his: list[int],
    prefix: bytes,
    sep: bytes,
    tail: bytes,
    /,
) -> list[bytes]: ...
