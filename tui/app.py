"""The dashboard App: owns the data source and the workers that talk to it.

All I/O happens in App-owned workers (``@work(exclusive=True, group=..., exit_on_error=False)``);
their results arrive as typed messages (``tui.messages``) and are folded into a
``FleetView``, which the main screen renders. The App depends only on the ``DataSource``
protocol, so QMP (``balloonctl.fleet.Fleet``) and HTTP (``balloonctl.http.HttpSource``)
sources plug in alike.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from textual import on, work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.timer import Timer

from balloonctl.errors import BalloonError, HostReadError
from balloonctl.host import HostMemory, read_host, read_meminfo
from balloonctl.model import BalloonState
from balloonctl.units import MiB, format_size
from tui.commands import FleetCommands
from tui.fleetview import FleetView, StateChange
from tui.messages import (
    ActionDone,
    AutoCycleDone,
    AutoStopped,
    EnableStats,
    HostMemoryRead,
    Reclaim,
    SetTargets,
    SnapshotReady,
    SourceEvent,
    SourceFailed,
    StateReady,
    ToggleAuto,
    ToggleHint,
)
from tui.remote import auto_event_line, show_remote, who
from tui.requests import auto_host_calls, hint_calls, reclaim_calls, stats_calls, target_calls
from tui.screens.main import MainScreen

DEFAULT_MEMINFO = Path("/proc/meminfo")

if TYPE_CHECKING:
    from balloonctl.auto import AutoController
    from balloonctl.fleet import DataSource
    from balloonctl.http.hosts import HostStatus

__all__ = ["DashboardApp", "backoff", "run_dashboard"]


def backoff(failures: int, base: float, cap: float = 30.0) -> float:
    """Seconds to wait after ``failures`` consecutive failures: doubling from ``base``."""
    return float(min(cap, base * 2.0 ** max(0, failures - 1)))


class DashboardApp(App[None]):
    """The live dashboard over any ``DataSource``.

    ``interval`` is seconds between polls; ``step`` the bytes the +/- keys move a target;
    ``stats_interval`` what the stats key sets; ``history`` samples kept per VM for the
    sparklines; ``meminfo`` the host's meminfo file (None: do not show host memory), or
    ``host_root`` the root of the host to read whole (``read_host``: RAM, KSM, PSI);
    ``clock`` stamps the event log; ``close_source`` closes the source when the App exits;
    ``handle_signals`` makes SIGTERM and SIGHUP quit like ``q`` (restoring the terminal)
    instead of killing the process with the terminal still in the dashboard's mode.

    ``auto`` (an ``AutoController`` over the same fleet) plans every ``auto_interval``
    seconds in a worker (its decisions show in the plan column and the detail pane) and
    applies them to the VMs it is switched on for (``A``; its changes go to the event log).
    """

    CSS_PATH = "dashboard.tcss"
    TITLE = "balloonctl dashboard"
    COMMANDS = App.COMMANDS | {FleetCommands}
    # Ctrl-C quits (Textual's default only says how to quit), over every widget's own
    # ctrl+c (copy); F10 quits as in htop and mc. ``q`` is in the screen's bindings.
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+c,f10", "quit", "Quit", show=False, priority=True),
    ]
    QUIT_SIGNALS = (signal.SIGTERM, signal.SIGHUP)

    def __init__(
        self,
        source: DataSource,
        *,
        interval: float = 1.0,
        step: int = 128 * MiB,
        stats_interval: int = 2,
        history: int = 300,
        meminfo: Path | None = DEFAULT_MEMINFO,
        clock: Callable[[], float] = time.time,
        snapshot_timeout: float = 30.0,
        events: bool = True,
        close_source: bool = False,
        handle_signals: bool = False,
        host_root: Path | None = None,
        auto: AutoController | None = None,
        auto_interval: float | None = None,
    ) -> None:
        super().__init__()
        self.handle_signals = handle_signals
        self.quit_signal: signal.Signals | None = None  # the signal that ended the App
        self._previous_handlers: dict[signal.Signals, Any] = {}
        self.host_root = host_root
        self.auto = auto
        self.auto_interval = auto_interval
        self.auto_cycles = 0  # cycles shown so far (tests wait on this)
        self._auto_wake = asyncio.Event()
        self.source = source
        self.interval = interval
        self.meminfo = meminfo
        self.snapshot_timeout = snapshot_timeout
        self.watch_events = events
        self.close_source = close_source
        self.view = FleetView(source.names, history=history)
        hosts = list(getattr(source, "labels", ()))
        if len(hosts) > 1:  # several hosts: grouped by host until another sort is chosen
            self.view.sort_key = "host"
        self.polls = 0  # snapshots applied so far (tests wait on this)
        self._poll_round = 0  # polls started so far
        self._target_locks: dict[str, asyncio.Lock] = {}
        self._wake = asyncio.Event()
        self._redraw_timer: Timer | None = None
        self.redraw_delay = 0.25
        # States read by ``snapshot_each`` go to the screen in batches at most this often.
        self.batch_delay = 0.25
        self.main = MainScreen(
            self.view, step=step, stats_interval=stats_interval, clock=clock,
            refresh_now=self._wake.set, sample_every=interval,
            hosts=hosts,
        )

    def on_mount(self) -> None:
        if self.handle_signals:
            loop = asyncio.get_running_loop()
            for signum in self.QUIT_SIGNALS:
                self._previous_handlers[signum] = signal.getsignal(signum)
                loop.add_signal_handler(signum, self._signalled, signum)
        self.push_screen(self.main)
        self._poll()
        if self.watch_events:
            self._events()
        if self.meminfo is not None or self.host_root is not None:
            self._host_memory(self.meminfo)
        if self.auto is not None:
            self._show_auto_status()
            self._auto_loop()

    def _signalled(self, signum: signal.Signals) -> None:
        self.quit_signal = signum
        self.exit()

    async def on_unmount(self) -> None:
        if self.handle_signals:
            loop = asyncio.get_running_loop()
            for signum, handler in self._previous_handlers.items():
                loop.remove_signal_handler(signum)
                signal.signal(signum, handler)  # e.g. ``demo``'s clean-up of its fake VMs
        if self.close_source:
            await self.source.close()

    # -- workers ----------------------------------------------------------------------------
    @work(exclusive=True, group="poll", exit_on_error=False)
    async def _poll(self) -> None:
        failures = 0
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            started = loop.time()
            self._poll_round += 1
            poll_round = self._poll_round
            try:
                async with asyncio.timeout(self.snapshot_timeout):
                    states = await self._snapshot_round(poll_round)
            except TimeoutError:
                failures += 1
                error = f"no snapshot within {self.snapshot_timeout:g}s"
                self.post_message(SourceFailed(error, "Timeout", backoff(failures, self.interval)))
            except Exception as exc:  # any failure of the source must not end the polling
                failures += 1
                kind = type(exc).__name__
                self.post_message(SourceFailed(str(exc), kind, backoff(failures, self.interval)))
            else:
                failures = 0
                self.post_message(SnapshotReady(states, poll_round))
            # A poll every interval, start to start; a slow poll is followed at once.
            delay = backoff(failures, self.interval) if failures else self.interval
            delay = max(0.0, delay - (loop.time() - started))
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass

    async def _snapshot_round(self, poll_round: int) -> list[BalloonState]:
        """One poll of the fleet. A source with ``snapshot_each()`` (an async iterator of
        each VM's state as soon as it is read) shows what has arrived without waiting for
        the whole round, so one slow or dead VM does not hold back the other rows: states
        go out in ``StateReady`` batches at most every ``batch_delay`` (not one message per
        VM), and the round's ``SnapshotReady`` carries the rest. Other sources:
        ``snapshot()``, all VMs at once."""
        each: Callable[[], AsyncIterator[BalloonState]] | None = getattr(
            self.source, "snapshot_each", None
        )
        if each is None:
            return await self.source.snapshot()
        loop = asyncio.get_running_loop()
        batch: list[BalloonState] = []
        handle: asyncio.TimerHandle | None = None

        def flush() -> None:
            nonlocal handle, batch
            handle = None
            if batch:
                self.post_message(StateReady(batch, poll_round))
                batch = []

        try:
            async for state in each():
                batch.append(state)
                if handle is None:
                    handle = loop.call_later(self.batch_delay, flush)
        except BaseException:
            flush()  # what did arrive still counts
            raise
        finally:
            if handle is not None:
                handle.cancel()
        return batch

    @work(exclusive=True, group="events", exit_on_error=False)
    async def _events(self) -> None:
        quiet = 0  # event streams that ended or failed in a row
        while True:
            try:
                async for name, event in self.source.events():
                    quiet = 0
                    self.post_message(SourceEvent(name, event))
            except Exception:  # reconnecting is the source's job; just ask again later
                pass
            # A polite-mode source has no event stream: it ends at once. Back off to a minute.
            quiet += 1
            await asyncio.sleep(backoff(quiet, self.interval, cap=60.0))

    @work(exclusive=True, group="auto", exit_on_error=False)
    async def _auto_loop(self) -> None:
        auto = self.auto
        assert auto is not None
        every = self.auto_interval or auto.settings.cycle
        while True:
            self._auto_wake.clear()
            try:
                cycle = await auto.cycle()
            except BalloonError as exc:  # JournalError: never run unrecorded
                auto.enabled = set()
                self.post_message(AutoStopped(str(exc)))
            except Exception as exc:  # a bug must not end the planning
                self.post_message(AutoStopped(f"{type(exc).__name__}: {exc}"))
            else:
                self.post_message(AutoCycleDone(cycle))
            try:
                await asyncio.wait_for(self._auto_wake.wait(), every)
            except TimeoutError:
                pass

    @work(exclusive=True, group="host", exit_on_error=False)
    async def _host_memory(self, path: Path | None) -> None:
        root = self.host_root
        while True:
            try:
                host: HostMemory
                if root is not None:
                    host = await asyncio.to_thread(read_host, root)
                else:
                    assert path is not None
                    host = await asyncio.to_thread(read_meminfo, path)
            except HostReadError as exc:
                self.post_message(HostMemoryRead(None, exc.message))
            else:
                self.post_message(HostMemoryRead(host))
            await asyncio.sleep(self.interval)

    @work(group="actions", exit_on_error=False)
    async def _act(
        self, action: str, calls: Mapping[str, Callable[[], Awaitable[str]]]
    ) -> None:
        async def one(name: str, call: Callable[[], Awaitable[str]]) -> None:
            try:
                detail = await call()
            except BalloonError as exc:
                self.post_message(ActionDone(action, name, False, exc.message))
            except Exception as exc:
                self.post_message(ActionDone(action, name, False, f"{type(exc).__name__}: {exc}"))
            else:
                self.post_message(ActionDone(action, name, True, detail))

        await asyncio.gather(*(one(name, call) for name, call in calls.items()))
        self._wake.set()

    # -- results ----------------------------------------------------------------------------
    @on(SnapshotReady)
    def _snapshot(self, message: SnapshotReady) -> None:
        host_status: Callable[[], list[HostStatus]] | None = getattr(
            self.source, "host_status", None)
        if host_status is not None:  # balloonctl serve instances: a line per host, auto's plan
            show_remote(self.view, self.main, self.source, host_status())
        self._log_changes(self.view.apply(message.states, poll_round=message.poll_round))
        self.polls += 1
        self.main.show_source_error(None)
        self._redraw()  # once per round, whatever arrived before it

    @on(StateReady)
    def _state(self, message: StateReady) -> None:
        # Shown with the round's end (one redraw per round); only a round still going
        # after an interval (a slow or dead VM) shows what has arrived before it ends.
        self._log_changes(self.view.apply(message.states, poll_round=message.poll_round))
        self._redraw_soon(max(self.redraw_delay, self.interval))

    def _log_changes(self, changes: list[StateChange]) -> None:
        for change in changes:
            self.view.note(change.name, change.text)
            self.main.log_line(f"{change.name}: {change.text}",
                               style="red" if change.bad else "green")

    def _redraw_soon(self, delay: float | None = None) -> None:
        """Events come in bursts (a whole fleet reconnecting): redraw once per burst."""
        if self._redraw_timer is None:
            delay = self.redraw_delay if delay is None else delay
            self._redraw_timer = self.set_timer(delay, self._redraw)

    def _redraw(self) -> None:
        if self._redraw_timer is not None:
            self._redraw_timer.stop()
            self._redraw_timer = None
        self.main.show_fleet()

    @on(SourceFailed)
    def _source_failed(self, message: SourceFailed) -> None:
        self.main.show_source_error(f"{message.error} (retry in {message.retry_in:g}s)")

    @on(HostMemoryRead)
    def _host(self, message: HostMemoryRead) -> None:
        self.main.show_host(message.host, message.error)

    @on(SourceEvent)
    def _source_event(self, message: SourceEvent) -> None:
        name, event = message.name, message.event
        line = auto_event_line(name, event)  # a service's auto: its changes
        if line is not None:
            self.view.note(name, line.note)
            self.main.log_line(line.text, style=line.style)
            return
        state = event.data.get("state")
        if isinstance(state, BalloonState):  # the source re-read the VM after connecting
            self._log_changes(self.view.apply([state]))
            self._redraw_soon()
        text = event.name
        actual = event.data.get("actual")
        if isinstance(actual, int):
            text += f" actual {format_size(actual)}"
            self.view.patch(name, actual=actual)
            self._redraw_soon()
        error = event.data.get("error")
        if isinstance(error, str):
            text += f": {error}"
        self.view.note(name, text)
        self.main.log_line(f"{who(name)}: {text}", style="dim")

    def _target_lock(self, name: str) -> asyncio.Lock:
        return self._target_locks.setdefault(name, asyncio.Lock())  # one per VM, kept

    @on(ActionDone)
    def _action_done(self, message: ActionDone) -> None:
        if message.action == "target":
            self.view.target_done(message.name, self._poll_round)
        # A success's detail says what was done ("target 1.9 GiB", "polling every 2s").
        result = message.detail if message.ok else f"{message.action} failed: {message.detail}"
        self.view.note(message.name, result)
        self.main.log_line(f"{message.name}: {result}", style="" if message.ok else "red")

    # -- requests from the screens ----------------------------------------------------------
    @on(SetTargets)
    def _set_targets(self, message: SetTargets) -> None:
        # The screen already shows these targets (FleetView.target_sent) until the results
        # are in. Targets of one VM go out in the order they were asked for.
        self._start("target", target_calls(self.source, message.targets, force=message.force,
                                           lock=self._target_lock))

    @on(ToggleHint)
    def _toggle_hint(self, message: ToggleHint) -> None:
        self._start("hint", hint_calls(self.source, message.hints))

    @on(EnableStats)
    def _enable_stats(self, message: EnableStats) -> None:
        self._start("stats", stats_calls(self.source, message.names, message.interval))

    # -- automatic ballooning ---------------------------------------------------------------
    def _auto_on(self, name: str) -> bool:
        auto = self.auto
        return auto is not None and auto.applies_to(name)

    def _show_auto_status(self) -> None:
        auto = self.auto
        if auto is None:
            return
        on = sum(1 for n in auto.names if auto.applies_to(n))
        self.main.auto_status = f"auto {'on' if on else 'off'} {on}/{len(auto.names)}"
        self.main.show_fleet()

    @on(AutoCycleDone)
    def _auto_cycle(self, message: AutoCycleDone) -> None:
        cycle = message.cycle
        self.auto_cycles += 1
        self.view.set_plan(cycle.decisions, self._auto_on)
        if cycle.host_error is not None:
            self.main.log_line(f"auto: {cycle.host_error}", style="red")
        for change in cycle.applied:
            self.view.note(change.name, f"auto: {change.line()}")
            self.main.log_line(f"auto {change.line()}")
        for move in cycle.foreign:
            self.view.note(move.name, move.line())
            self.main.log_line(move.line(), style="yellow")
        for name, exc in cycle.failed.items():
            self.main.log_line(f"{name}: auto failed: {exc.message}", style="red")
        if cycle.applied:
            self._wake.set()  # show the moves at once
        self._redraw_soon()

    @on(AutoStopped)
    def _auto_stopped(self, message: AutoStopped) -> None:
        self.main.log_line(f"auto stopped: {message.error}", style="bold red")
        self._show_auto_status()

    @on(ToggleAuto)
    def _toggle_auto(self, message: ToggleAuto) -> None:
        auto = self.auto
        if auto is None:  # balloonctl serve instances: switch their hosts' auto
            self._start("auto", auto_host_calls(self.source, message.names, message.on),
                        cannot="Automatic ballooning needs a QMP fleet")
            return
        names = auto.names if message.names is None else message.names
        enabled = set(auto.names) if auto.enabled is None else set(auto.enabled)
        enabled = enabled | set(names) if message.on else enabled - set(names)
        auto.enabled = None if enabled >= set(auto.names) else enabled
        who = "the whole fleet" if message.names is None else ", ".join(names)
        self.main.log_line(f"auto {'on' if message.on else 'off'} for {who}")
        self.view.set_plan([r.plan for r in self.view.rows.values() if r.plan is not None],
                           self._auto_on)
        self._show_auto_status()
        self._auto_wake.set()  # plan (and apply) now

    @on(Reclaim)
    def _reclaim(self, message: Reclaim) -> None:
        self._start("take back", reclaim_calls(self.auto, self.source, message.names),
                    cannot="Taking a VM back needs automatic ballooning (here or a service's)")
        self._auto_wake.set()

    def _start(self, action: str, calls: Mapping[str, Callable[[], Awaitable[str]]] | None,
               *, cannot: str = "") -> None:
        # One log line per action and VM: its result, when it is in (ActionDone); no calls:
        # nothing here can do it, and the log and a notification say why (``cannot``).
        if calls is None:
            self.main.log_line(cannot, style="yellow")
            self.notify(cannot, severity="warning")
            return
        self._act(action, calls)


def run_dashboard(
    source: DataSource,
    *,
    interval: float = 1.0,
    step: int = 128 * MiB,
    stats_interval: int = 2,
    history: int = 300,
    meminfo: Path | None = DEFAULT_MEMINFO,
    headless: bool = False,
    host_root: Path | None = None,
    auto: AutoController | None = None,
    auto_interval: float | None = None,
) -> None:
    """Run the dashboard on ``source`` until the user quits (``q``, ctrl+c, f10) or the
    process gets SIGTERM or SIGHUP; the terminal is restored and the source closed.
    ``auto``: automatic ballooning over the same source (see ``DashboardApp``)."""
    app = DashboardApp(
        source, interval=interval, step=step, stats_interval=stats_interval,
        history=history, meminfo=meminfo, close_source=True, handle_signals=True,
        host_root=host_root, auto=auto, auto_interval=auto_interval,
    )
    app.run(headless=headless)
