"""Fan-out worker processes: ``streamgauge serve --workers N`` (docs/workers.md).

One writer process (``supervisor.WriterServer``, ``supervisor.Workers``) and ``N - 1`` worker
processes (``process.py``) share the serving port (``SO_REUSEPORT``). A worker serves live
streams with a read-only engine (``engine.WorkerEngine``) that follows the writer's log over a
local bus (``bus/local.py``); it hands every other connection, unread, to the writer
(``routing.py``).
"""
