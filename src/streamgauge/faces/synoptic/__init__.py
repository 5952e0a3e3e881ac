"""The Synoptic-compatible face, ``/feed``: the WebSocket push feed with durable sessions."""

from streamgauge.faces.synoptic.feed import router

__all__ = ["router"]
