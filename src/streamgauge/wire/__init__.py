"""Pure codecs of streamgauge's native wire format, shared by the server and its clients.

Nothing here does I/O or imports any other part of streamgauge (an import contract checks it),
so a client program can use these modules against any streamgauge, embedded or clustered:

* ``framing``: NDJSON lines and Server-Sent Events as the server writes them, and the
  incremental decoders a client reads them with (bounded buffers, any chunk split).
* ``rows``: the observation row shape and RFC 3339 times in epoch milliseconds.
* ``errors``: the JSON error envelope ``{"error": {"status", "code", "message", "details"}}``.
* ``pages``: opaque page tokens (``next`` of one page, ``page=`` of the next).

Malformed input raises ``ValueError`` (``WireError``); the server turns it into a 400.
"""

from streamgauge.wire.errors import WireError

__all__ = ["WireError"]
