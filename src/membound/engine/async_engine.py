"""AsyncLLMEngine: the blocking LLMEngine step loop on a dedicated thread, served to asyncio.

```
 asyncio loop (server)                      engine thread (the only caller of LLMEngine)
 add_request() --("add", fut)--> commands --> engine.add_request  -- fut result/exception -->
 stream.abort() --("abort")----> commands --> engine.abort_request (blocks freed at once)
 call_on_engine_thread(fn) -("call")-> commands --> fn(engine), between steps -- fut result -->
 RequestStream <-- call_soon_threadsafe(_dispatch, outputs) <-- engine.step()
```

``AsyncLLMEngine.build(factory)`` builds the engine on the thread that will step it (what
`membound serve` does). OpenMP keeps one thread pool per thread that starts parallel work:
an engine built on the main thread and stepped on another leaves two pools, more OpenMP
threads than a small machine has cores, and libgomp then stops spinning between parallel
regions; every region wakes its threads through the kernel. On the 2-core development
machine that made a batch-1 SmolLM2 decode step 25.5 ms against 13.6 (docs/benchmarks.md,
run 10).

LLMEngine is not thread-safe, so adds and aborts are queued and applied between steps. Each
request has its own RequestStream; it keeps only the latest cumulative RequestOutput (a slow
reader skips intermediate states instead of queueing them). If the loop dies, every in-flight
stream fails with EngineDeadError, new requests are refused and ``is_running`` turns False.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

from membound.engine.intake import ValidatedRequest
from membound.engine.llm_engine import LLMEngine
from membound.engine.stats import EngineStats
from membound.outputs import RequestOutput
from membound.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

_STOP = object()
_T = TypeVar("_T")


class EngineDeadError(RuntimeError):
    """The engine loop has stopped (crashed or shut down); no request can be served."""


class EngineShutdownError(EngineDeadError):
    """The server is shutting down: no new requests, and a drain that ran out of time ends
    the requests still running."""


class EngineObserver(Protocol):
    """Called on the engine thread after each step (and after aborts) with the outputs it
    produced and the time they were produced (time.monotonic())."""

    def on_outputs(self, outputs: list[RequestOutput], now: float) -> None: ...


class RequestStream:
    """Async iterator of one request's cumulative RequestOutputs; ends after the finished one.

    Call ``abort()`` (or ``aclose()``) when the consumer goes away before the end: the
    request is aborted in the engine and its KV blocks freed. Both are no-ops once finished.
    """

    def __init__(self, request_id: str, owner: AsyncLLMEngine) -> None:
        self.request_id = request_id
        self._owner = owner
        self._latest: RequestOutput | None = None
        self._error: BaseException | None = None
        self._event = asyncio.Event()
        self.finished = False  # the engine is done with it (finished, failed or aborted)
        self._ended = False  # the consumer has seen the end

    # ---- producer side (event loop thread) ---------------------------------------------
    def _put(self, output: RequestOutput) -> None:
        self._latest = output
        if output.finished:
            self.finished = True
        self._event.set()

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self.finished = True
        self._event.set()

    # ---- consumer side -----------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[RequestOutput]:
        return self

    async def __anext__(self) -> RequestOutput:
        if self._ended:
            raise StopAsyncIteration
        while self._latest is None and self._error is None:
            self._event.clear()
            await self._event.wait()
        if self._latest is not None:
            out, self._latest = self._latest, None
            if out.finished:
                self._ended = True
            return out
        self._ended = True
        assert self._error is not None
        raise self._error

    def abort(self) -> None:
        """Abort the request unless it has already finished (idempotent)."""
        if not self.finished:
            self.finished = True
            self._owner._abort(self.request_id)

    async def aclose(self) -> None:
        self.abort()


class _EngineThread:
    """A thread that builds the engine, then waits for the one loop it will run (the
    engine's step loop, or None to end without one)."""

    def __init__(self, factory: Callable[[], LLMEngine]) -> None:
        self._built: concurrent.futures.Future[LLMEngine] = concurrent.futures.Future()
        self._target: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=1)
        self.thread = threading.Thread(target=self._main, args=(factory,), name="membound-engine",
                                       daemon=True)  # fmt: skip
        self.thread.start()

    def engine(self) -> LLMEngine:
        """The built engine (waits for the build; raises what it raised)."""
        return self._built.result()

    def run(self, target: Callable[[], None] | None) -> None:
        self._target.put(target)

    def _main(self, factory: Callable[[], LLMEngine]) -> None:
        try:
            self._built.set_result(factory())
        except BaseException as e:  # noqa: BLE001 - handed to the building thread
            self._built.set_exception(e)
            return
        target = self._target.get()
        if target is not None:
            target()


class AsyncLLMEngine:
    """Runs ``engine``'s step loop on a thread; ``start()`` must be awaited inside the event
    loop that will consume the streams. ``build(factory)`` also builds the engine there."""

    def __init__(self, engine: LLMEngine, observer: EngineObserver | None = None, *,
                 engine_thread: _EngineThread | None = None) -> None:  # fmt: skip
        """``engine_thread``: the thread ``engine`` was built on (``build``), which will run
        the loop; else ``start()`` starts one for it."""
        self.engine = engine
        self.observer = observer
        self._engine_thread = engine_thread
        self._commands: queue.Queue[Any] = queue.Queue()
        self._streams: dict[str, RequestStream] = {}  # touched on the event loop thread only
        self._pending: set[asyncio.Future[Any]] = set()  # adds/calls not answered yet
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._draining = False
        self._drain_cut: asyncio.Event | None = None
        self.dead_error: BaseException | None = None
        self.latest_stats: EngineStats = engine.stats()

    @classmethod
    def build(cls, factory: Callable[[], LLMEngine],
              observer: EngineObserver | None = None) -> AsyncLLMEngine:  # fmt: skip
        """Build the engine with ``factory()`` on the thread that will step it (module
        docstring: one OpenMP pool); raises what the factory raised."""
        host = _EngineThread(factory)
        return cls(host.engine(), observer, engine_thread=host)

    # ---- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("AsyncLLMEngine already started")
        self._loop = asyncio.get_running_loop()
        if self._engine_thread is None:  # an engine built elsewhere: nothing to build here
            engine = self.engine
            self._engine_thread = _EngineThread(lambda: engine)
        self._thread = self._engine_thread.thread
        self._engine_thread.run(self._run)

    async def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the loop after the current step; in-flight streams fail with EngineDeadError."""
        if self._thread is None:
            if self._engine_thread is not None:  # built, never started: let its thread end
                self._engine_thread.run(None)
            return
        self._stopping = True
        self._commands.put(_STOP)
        await asyncio.to_thread(self._thread.join, timeout)
        self._fail_all(EngineDeadError("the engine is shutting down"))

    async def drain(self, timeout_s: float) -> int:
        """Stop admitting (add_request raises EngineShutdownError), wait up to ``timeout_s``
        for the running requests to finish (or for ``cut_drain()``), then abort the rest:
        their streams fail with EngineShutdownError. Returns how many were cut."""
        self._draining = True
        cut = self._drain_cut = self._drain_cut or asyncio.Event()
        deadline = time.monotonic() + timeout_s
        while self._streams and not cut.is_set():
            try:
                await asyncio.wait_for(cut.wait(), min(0.05, max(0.0, deadline - time.monotonic())))
            except TimeoutError:
                pass
            if time.monotonic() >= deadline:
                break
        streams = list(self._streams)
        self._fail_all(EngineShutdownError(
            f"the server is shutting down and this request did not finish within the "
            f"{timeout_s:g}s drain time"))
        if streams and self.is_running:
            for request_id in streams:
                self._commands.put(("abort", request_id))
            try:  # commands run in order: once this returns, the aborts were applied
                await asyncio.wait_for(self.call_on_engine_thread(lambda engine: None), 10.0)
            except (EngineDeadError, TimeoutError):
                pass  # the loop is gone or wedged: shutdown() stops it either way
        return len(streams)

    def cut_drain(self) -> None:
        """End a running drain now (a second signal)."""
        self._draining = True
        if self._drain_cut is None:
            self._drain_cut = asyncio.Event()
        self._drain_cut.set()

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def num_streams(self) -> int:
        """Requests in flight (each stream is one engine request)."""
        return len(self._streams)

    @property
    def is_running(self) -> bool:
        return (
            self._thread is not None and self._thread.is_alive()
            and self.dead_error is None and not self._stopping
        )

    @property
    def num_waiting(self) -> int:
        """Waiting requests (sequences) as of the last step, plus adds not yet applied."""
        return self.latest_stats.num_waiting + self._commands.qsize()

    # ---- requests (event loop thread) --------------------------------------------------
    async def add_request(
        self,
        request_id: str,
        prompt: str | list[int] | ValidatedRequest,
        params: SamplingParams,
        priority: int = 0,
    ) -> RequestStream:
        """Queue a request; returns its stream once the engine accepted it. Raises the
        engine's ValueError (RequestRejectedError, ...) if it refused it, EngineDeadError if
        the loop is not running."""
        if self._draining:
            raise EngineShutdownError("the server is shutting down; retry on another replica")
        if not self.is_running:
            raise EngineDeadError(self._dead_message())
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already in use")
        assert self._loop is not None
        stream = RequestStream(request_id, self)
        accepted: asyncio.Future[None] = self._loop.create_future()
        self._streams[request_id] = stream
        self._pending.add(accepted)
        accepted.add_done_callback(self._pending.discard)
        self._commands.put(("add", request_id, prompt, params, priority, accepted))
        try:
            await accepted
        except BaseException:
            self._streams.pop(request_id, None)
            if not accepted.done() or accepted.cancelled():
                self._commands.put(("abort", request_id))  # cancelled while queued
            raise
        return stream

    async def call_on_engine_thread(self, fn: Callable[[LLMEngine], _T]) -> _T:
        """Run ``fn(engine)`` on the engine thread between two steps and return its result:
        the thread-safe way to read engine state (a dashboard snapshot). ``fn`` must be quick
        and must not change the engine; the next step waits for it. Raises what ``fn`` raised,
        or EngineDeadError if the loop is not running."""
        if not self.is_running:
            raise EngineDeadError(self._dead_message())
        assert self._loop is not None
        done: asyncio.Future[Any] = self._loop.create_future()
        self._pending.add(done)
        done.add_done_callback(self._pending.discard)
        self._commands.put(("call", fn, done))
        return await done

    def _abort(self, request_id: str) -> None:
        if self._streams.pop(request_id, None) is not None and self.is_running:
            self._commands.put(("abort", request_id))

    # ---- engine thread -----------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping:
                self._apply_commands(block=not self.engine.has_unfinished_requests())
                if self._stopping or not self.engine.has_unfinished_requests():
                    continue
                step_start = time.monotonic()
                outputs = self.engine.step()
                self._note_scheduled(outputs, step_start)
                self._publish(outputs)
        except BaseException as e:  # noqa: BLE001 - the loop must report any death
            logger.exception("the engine loop died; in-flight requests fail")
            self.dead_error = e
            self._call_in_loop(self._fail_all, EngineDeadError(self._dead_message()))

    def _apply_commands(self, block: bool) -> None:
        commands = [self._commands.get()] if block else []
        while True:
            try:
                commands.append(self._commands.get_nowait())
            except queue.Empty:
                break
        aborted: list[RequestOutput] = []
        for cmd in commands:
            if cmd is _STOP:
                self._stopping = True
            elif cmd[0] == "add":
                self._apply_add(*cmd[1:])
            elif cmd[0] == "call":
                self._apply_call(*cmd[1:])
            else:
                aborted.extend(self.engine.abort_request([cmd[1]]))
        if commands:
            self._publish(aborted)

    def _apply_add(
        self, request_id: str, prompt: str | list[int] | ValidatedRequest, params: SamplingParams,
        priority: int,
        accepted: asyncio.Future[None],
    ) -> None:
        try:
            self.engine.add_request(request_id, prompt, params, priority=priority)
        except Exception as e:  # noqa: BLE001 - handed to the caller
            self._call_in_loop(_settle, accepted, e)
            return
        self._call_in_loop(_settle, accepted, None)

    def _apply_call(self, fn: Callable[[LLMEngine], Any], done: asyncio.Future[Any]) -> None:
        try:
            value = fn(self.engine)
        except Exception as e:  # noqa: BLE001 - handed to the caller
            self._call_in_loop(_settle, done, e)
            return
        self._call_in_loop(_settle, done, None, value)

    def _note_scheduled(self, outputs: list[RequestOutput], step_start: float) -> None:
        """Fill ``metrics.first_scheduled_time`` where the engine left it unset: a request that
        produced output in this step was scheduled no later than the step's start."""
        for out in outputs:
            if out.metrics is not None and out.metrics.first_scheduled_time is None:
                out.metrics.first_scheduled_time = max(step_start, out.metrics.arrival_time)

    def _publish(self, outputs: list[RequestOutput]) -> None:
        self.latest_stats = self.engine.stats()
        if self.observer is not None:
            try:
                self.observer.on_outputs(outputs, time.monotonic())
            except Exception:  # noqa: BLE001 - metrics must never kill the engine
                logger.exception("engine observer failed")
        if outputs:
            self._call_in_loop(self._dispatch, outputs)

    def _call_in_loop(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed meanwhile
            pass

    # ---- back on the event loop thread -------------------------------------------------
    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is None:
                continue
            stream._put(out)
            if out.finished:
                del self._streams[out.request_id]

    def _fail_all(self, error: BaseException) -> None:
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream._fail(error)
        for future in list(self._pending):
            _settle(future, error)

    def _dead_message(self) -> str:
        if self.dead_error is not None:
            return f"the engine loop died ({type(self.dead_error).__name__}); restart the server"
        return "the engine loop is not running"


def _settle(future: asyncio.Future[Any], error: BaseException | None, value: Any = None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(error)
