"""Local actors: what an ``ACTOR`` action runs, with the alert as JSON input.

* ``plot`` (built in): the instrument's values from a day before to a day after the alert time,
  drawn with matplotlib (Agg) to ``<data>/plots/<alert id>.png``, served at
  ``/api/v1/projects/<project>/plots/<alert id>.png`` (the Tapis tutorial's actor, done locally).
  Plots older than ``plot_retention_days`` are deleted (``delete_old_plots``).
* Registered in ``STREAMGAUGE_ACTORS`` (a JSON object, actor id -> spec): ``"command:<argv>"``
  runs the command with the alert JSON on stdin (exit 0 is success, stdout is kept);
  ``"python:<module>:<function>"`` calls the function with the alert dict (a coroutine function
  is awaited, a plain one runs in a thread); its return value is kept.

Errors: ``ActorFailed`` (the actor ran and failed, or could not start); the worker records it.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import shlex
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from streamgauge.domain.log import HistoryQuery

if TYPE_CHECKING:
    from streamgauge.core.engine import Engine

DAY_MS = 86_400_000
OUTPUT_BYTES = 2000  # of an actor's output kept in the outcome


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
    def __init__(
        self, engine: Engine, registered: Mapping[str, str], timeout: float, threads: int = 4
    ) -> None:
        self._engine = engine
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
        engine = self._engine
        reg = engine.registry
        project = reg.projects.get(str(alert.get("project_id")))
        dev = reg.devices.get((project.pk, str(alert.get("inst_id")))) if project else None
        if project is None or dev is None:
            raise ActorFailed("the alert's instrument no longer exists")
        at = int(alert.get("time_ms") or 0)
        variables = {pk: reg.variables_by_pk[pk] for pk in reg.device_variables.get(dev.pk, ())}
        series = tuple(pk for (v, _), pk in list(reg.series.items()) if v in variables)
        batch = await engine.history(
            HistoryQuery(
                project.pk,
                series=series,
                qc_remove=0,
                start=at - DAY_MS,
                end=at + DAY_MS + 1,
                limit=engine.settings.page_limit_max,
            )
        )
        lines: dict[str, tuple[list[datetime], list[float]]] = {}  # naive UTC times
        for s, t, v in zip(batch.series.tolist(), batch.times.tolist(), batch.values, strict=True):
            if type(v) is not float:
                continue
            var = variables[reg.series_by_pk[s].variable_pk]
            xs, ys = lines.setdefault(var.doc.id, ([], []))
            xs.append(datetime.fromtimestamp(t / 1000, UTC).replace(tzinfo=None))
            ys.append((v - var.offset) / var.scale)
        path = plot_path(engine.settings.data, alert_id)
        await self._in_thread(_draw, path, lines, str(alert.get("inst_id")))
        return {
            "url": f"/api/v1/projects/{project.doc.id}/plots/{alert_id}.png",
            "points": sum(len(x) for x, _ in lines.values()),
        }


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
