"""Local actors: what an ``ACTOR`` action runs, with the alert as JSON input.

* ``plot`` (built in): the instrument's values from a day before to a day after the alert time,
  drawn with matplotlib (Agg) to ``<data>/plots/<alert id>.png``, served at
  ``/api/v1/projects/<project>/plots/<alert id>.png`` (the Tapis tutorial's actor, done locally).
  Plots older than ``plot_retention_days`` are deleted (``delete_old_plots``).
* Registered in ``STREAMGAUGE_ACTORS`` (a JSON object, actor id -> spec): ``"command:<argv>"``
  runs the command with the alert JSON on stdin (exit 0 is success, stdout is kept);
  ``"python:<module>:<function>"`` calls the function with the alert dict (a coroutine function
  is awaited, a plain one runs in a thread); its return value is kept.

``ActorWorker`` runs the ``ACTOR`` actions of logged alerts: one worker per project over its
rows not yet done, in alert order; a row is marked done after success or after
``ACTOR_ATTEMPTS`` failures, so a restart runs what was left. It reaches the alert log through
``ActorWork`` (where the rows are, how an outcome is recorded), and ``Actors`` reads history
through ``HistoryReader``: neither knows the engine.

Errors: ``ActorFailed`` (the actor ran and failed, or could not start); the worker records it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import math
import shlex
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson

from streamgauge.core.filters import Selection
from streamgauge.core.registry import Registry
from streamgauge.domain.batch import Batch
from streamgauge.domain.log import HistoryQuery

log = logging.getLogger("streamgauge.alerts")

DAY_MS = 86_400_000
OUTPUT_BYTES = 2000  # of an actor's output kept in the outcome
ACTOR_ATTEMPTS = 3
ACTOR_RETRY_SECONDS = (1.0, 5.0)
ACTOR_CONCURRENCY = 4  # actions running at once, over all projects
ACTOR_POLL_SECONDS = 5.0  # the supervisor looks for left-over actor work this often
PLOT_SWEEP_SECONDS = 3600.0  # old plots are looked for this often (and on start)
FETCH = 100

# An ACTOR action not yet done: (alert id, slot, channel pk, actor id, body, last outcome).
Todo = tuple[int, int, int, str, bytes, str | None]


class HistoryReader(Protocol):
    """Stored rows in (time, cursor) order (``Engine.history``): what the plot actor reads."""

    async def history(self, query: HistoryQuery, selection: Selection | None = None) -> Batch: ...


class ActorWork(Protocol):
    """Where the ``ACTOR`` actions of logged alerts are (the alert log's actions)."""

    async def projects(self) -> list[int]:
        """The projects that have actions not yet done."""
        ...

    async def todo(self, project_pk: int, limit: int) -> list[Todo]:
        """One project's actions not yet done, in alert order."""
        ...

    async def record(self, alert_id: int, slot: int, outcome: dict[str, Any], done: bool) -> None:
        """Write an attempt's outcome (``done``: never run it again)."""
        ...


class ActorFailed(Exception):
    pass


def plot_path(data: Path, alert_id: int) -> Path:
    return data / "plots" / f"{alert_id}.png"


def delete_old_plots(data: Path, older_than_seconds: float, now: float | None = None) -> int:
    """Delete the plot actor's images (and left-over temporary files) last written more than
    ``older_than_seconds`` ago; how many were deleted. Blocking: run it in a thread."""
    folder = data / "plots"
    if not folder.is_dir():
        return 0
    horizon = (time.time() if now is None else now) - older_than_seconds
    gone = 0
    for path in folder.glob("*.png"):
        try:
            if path.stat().st_mtime < horizon:
                path.unlink()
                gone += 1
        except FileNotFoundError:  # deleted meanwhile
            continue
    return gone


class Actors:
    """The registered actors and the built-in ``plot``, run on their own threads."""

    def __init__(
        self,
        history: HistoryReader,
        registry: Registry,
        data: Path,
        registered: Mapping[str, str],
        timeout: float,
        threads: int = 4,
        *,
        page_limit: int = 100_000,
    ) -> None:
        self._history = history
        self._registry = registry
        self._data = data
        self._page_limit = page_limit
        self._specs = dict(registered)
        self._timeout = timeout
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None
        for name, spec in self._specs.items():
            kind, _, rest = spec.partition(":")
            if kind not in ("command", "python") or not rest.strip():
                raise ValueError(
                    f"actor {name!r}: spec must be 'command:<argv>' or 'python:<module>:<function>'"
                )

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run blocking actor work (plots, plain Python actors) on the actors' own threads, so
        actors that hang (a timed-out thread cannot be stopped) never take the threads the rest
        of the server shares."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="actor")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        """Stop the actors' threads (work still queued is dropped; a restart runs it again)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def names(self) -> set[str]:
        return {"plot", *self._specs}

    async def run(self, actor_id: str, alert_id: int, alert: dict[str, Any]) -> dict[str, Any]:
        """Run one actor; a dict describing what it did, or ``ActorFailed``."""
        if actor_id == "plot":
            return await self._plot(alert_id, alert)
        spec = self._specs.get(actor_id)
        if spec is None:
            raise ActorFailed(f"no actor {actor_id!r} is registered")
        kind, _, rest = spec.partition(":")
        if kind == "command":
            return await self._command(shlex.split(rest), alert)
        return await self._python(rest, alert)

    async def _command(self, argv: list[str], alert: dict[str, Any]) -> dict[str, Any]:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise ActorFailed(f"could not start {argv[0]!r}: {exc}") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(orjson.dumps(alert)), self._timeout)
        except TimeoutError as exc:
            proc.kill()
            await proc.wait()
            raise ActorFailed(f"timed out after {self._timeout} s") from exc
        if proc.returncode != 0:
            raise ActorFailed(
                f"exit status {proc.returncode}: {err.decode(errors='replace')[:OUTPUT_BYTES]}"
            )
        return {"exit_status": 0, "output": out.decode(errors="replace")[:OUTPUT_BYTES]}

    async def _python(self, target: str, alert: dict[str, Any]) -> dict[str, Any]:
        module, _, name = target.partition(":")
        try:
            fn: Callable[..., Any] = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ActorFailed(f"cannot load {target!r}: {exc}") from exc
        try:
            if inspect.iscoroutinefunction(fn):
                result = await asyncio.wait_for(fn(alert), self._timeout)
            else:
                result = await asyncio.wait_for(self._in_thread(fn, alert), self._timeout)
        except ActorFailed:
            raise
        except Exception as exc:  # an actor's own failure is recorded, not raised further
            raise ActorFailed(f"{type(exc).__name__}: {exc}") from exc
        return {"result": result if isinstance(result, str | int | float | None) else str(result)}

    async def _plot(self, alert_id: int, alert: dict[str, Any]) -> dict[str, Any]:
        reg = self._registry
        project = reg.projects.get(str(alert.get("project_id")))
        dev = reg.devices.get((project.pk, str(alert.get("inst_id")))) if project else None
        if project is None or dev is None:
            raise ActorFailed("the alert's instrument no longer exists")
        at = int(alert.get("time_ms") or 0)
        variables = {pk: reg.variables_by_pk[pk] for pk in reg.device_variables.get(dev.pk, ())}
        series = tuple(pk for (v, _), pk in list(reg.series.items()) if v in variables)
        batch = await self._history.history(
            HistoryQuery(
                project.pk,
                series=series,
                qc_remove=0,
                start=at - DAY_MS,
                end=at + DAY_MS + 1,
                limit=self._page_limit,
            )
        )
        lines: dict[str, tuple[list[datetime], list[float]]] = {}  # naive UTC times
        for s, t, v in zip(batch.series.tolist(), batch.times.tolist(), batch.values, strict=True):
            if type(v) is not float:
                continue
            var = variables[reg.series_by_pk[s].variable_pk]
            xs, ys = lines.setdefault(var.id, ([], []))
            xs.append(datetime.fromtimestamp(t / 1000, UTC).replace(tzinfo=None))
            ys.append((v - var.offset) / var.scale)
        path = plot_path(self._data, alert_id)
        await self._in_thread(_draw, path, lines, str(alert.get("inst_id")))
        return {
            "url": f"/api/v1/projects/{project.doc.id}/plots/{alert_id}.png",
            "points": sum(len(x) for x, _ in lines.values()),
        }


class ActorWorker:
    """Runs the ``ACTOR`` actions of logged alerts (see the module docstring)."""

    def __init__(
        self, actors: Actors, work: ActorWork, data: Path, plot_retention_days: float
    ) -> None:
        self.actors = actors
        self._work = work
        self._data = data
        self._retention_days = plot_retention_days
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(ACTOR_CONCURRENCY)  # FIFO: projects take turns
        self._tasks: dict[int, asyncio.Task[None]] = {}  # project pk -> its worker
        self._more: dict[int, bool] = {}  # project pk -> work may have come meanwhile
        self.running = False  # workers start only while the supervisor runs

    async def stop(self) -> None:
        """Stop every project's worker (the supervisor is its owner's task to cancel)."""
        self.running = False
        running = list(self._tasks.values())
        for t in running:
            t.cancel()
        for t in running:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self.actors.close()

    async def run(self) -> None:
        """The actors' supervisor: every ``ACTOR_POLL_SECONDS`` (and on start) it finds the
        projects with actions not yet done (after a restart, after failures) and makes sure
        each has its worker; it also deletes plots older than ``plot_retention_days``."""
        swept = -math.inf
        while True:
            try:
                projects = await self._work.projects()
            except Exception:
                log.exception("reading actor work failed")
                projects = []
            for project_pk in projects:
                self.wake(project_pk)
            if time.monotonic() - swept >= PLOT_SWEEP_SECONDS:
                swept = time.monotonic()
                days = self._retention_days
                if days > 0:
                    try:
                        await asyncio.to_thread(delete_old_plots, self._data, days * 86400.0)
                    except Exception:
                        log.exception("deleting old plots failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ACTOR_POLL_SECONDS):
                    await self._wake.wait()
            self._wake.clear()

    def wake(self, project_pk: int) -> None:
        """The project may have actions to run: start its worker unless it runs already."""
        self._more[project_pk] = True
        if project_pk not in self._tasks and self.running:
            self._tasks[project_pk] = asyncio.get_running_loop().create_task(
                self._project(project_pk), name=f"actors of project {project_pk}"
            )

    async def _project(self, project_pk: int) -> None:
        """One project's worker: its ``ACTOR`` rows not yet done, in alert order, one at a time.
        Workers of all projects share ``ACTOR_CONCURRENCY`` slots (a FIFO semaphore, so projects
        take turns: one tenant's backlog or slow actor cannot starve the others), and a failed
        action's retry delay holds back only its own project. The worker ends when its project
        has nothing left."""
        try:
            while True:
                self._more[project_pk] = False
                try:
                    todo = await self._work.todo(project_pk, FETCH)
                except Exception:
                    log.exception("reading actor work of project %d failed", project_pk)
                    await asyncio.sleep(ACTOR_RETRY_SECONDS[-1])
                    continue
                if not todo:
                    if self._more.get(project_pk):
                        continue  # woken while reading: look again
                    return
                for alert_id, slot, _channel, actor_id, body, previous in todo:
                    async with self._slots:
                        retry = await self._run_one(alert_id, slot, actor_id, body, previous)
                    if retry:
                        await asyncio.sleep(retry)
        finally:
            if self._tasks.get(project_pk) is asyncio.current_task():
                del self._tasks[project_pk]
                self._more.pop(project_pk, None)

    async def _run_one(
        self, alert_id: int, slot: int, actor_id: str, body: bytes, previous: str | None
    ) -> float:
        """Run one action and record its outcome; the delay before its retry (0: done)."""
        attempt = (orjson.loads(previous).get("attempt", 0) if previous else 0) + 1
        alert = orjson.loads(body)
        started = time.perf_counter()
        outcome: dict[str, Any] = {"attempt": attempt, "actor_id": actor_id}
        try:
            result = await self.actors.run(actor_id, alert_id, alert)
            outcome |= {"delivered": True, "dead_lettered": False, "error": None, **result}
            done = True
        except Exception as exc:  # ActorFailed, or a bug: recorded, never kills the worker
            if not isinstance(exc, ActorFailed):
                log.exception("actor %s failed unexpectedly", actor_id)
            done = attempt >= ACTOR_ATTEMPTS
            error = str(exc) if isinstance(exc, ActorFailed) else f"internal error: {exc!r}"
            outcome |= {"delivered": False, "dead_lettered": done, "error": error}
        outcome["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
        outcome["execution_id"] = f"{alert_id}-{slot}-{attempt}"
        now_ms = int(time.time() * 1000)
        outcome["at"] = datetime.fromtimestamp(now_ms / 1000, UTC).isoformat(
            timespec="milliseconds"
        )
        await self._work.record(alert_id, slot, outcome, done)
        if done:
            return 0.0
        return ACTOR_RETRY_SECONDS[min(attempt, len(ACTOR_RETRY_SECONDS)) - 1]


def _draw(path: Path, lines: dict[str, tuple[list[datetime], list[float]]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4), dpi=100)
    ax = fig.add_subplot()
    for name, (xs, ys) in sorted(lines.items()):
        ax.plot(np.array(xs, dtype="datetime64[ms]"), np.array(ys), label=name)
    ax.set_title(f"Timeseries Stream Output: {title}")
    ax.set_xlabel("time (UTC)")
    if lines:
        ax.legend()
    fig.autofmt_xdate()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, format="png")
    tmp.replace(path)
