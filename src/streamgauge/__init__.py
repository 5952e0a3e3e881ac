"""streamgauge: a self-hosted real-time hub for sensor observations."""

__version__ = "0.1.0"

__all__ = ["__version__"]
