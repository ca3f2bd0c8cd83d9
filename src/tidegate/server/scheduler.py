"""The scheduler: each sync's ``schedule`` (cron, UTC) fires a run, in the server's process.

The last tick handled per sync is kept in the state store (``tidegate_schedule``),
so a server that was down across one or more ticks fires each such sync once
when it starts again, not once per tick missed. A sync seen for the first time
(or whose expression changed) waits for its next tick. A tick that finds the
sync still running or queued is skipped, so runs never overlap or pile up.

Time comes from an injected clock and waiting from an injected sleeper, so tests
drive the scheduler through days in microseconds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from tidegate import cron
from tidegate.store import Store

log = logging.getLogger("tidegate")

Clock = Callable[[], datetime]
# Fires a run of the sync for the tick; returns False when it skipped it (overlap).
Fire = Callable[[str, datetime], bool]
MAX_SLEEP_S = 30.0  # re-read the clock at least this often (a suspended laptop, a clock step)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Scheduler:
    def __init__(self, schedules: Mapping[str, str], store: Store, fire: Fire,
                 clock: Clock = utcnow) -> None:
        self.schedules = {name: cron.expand(expr) for name, expr in schedules.items()}
        self._store = store
        self._fire = fire
        self._clock = clock
        self._last: dict[str, datetime] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        with self._store.transaction() as tx:
            rows = tx.execute("select sync, cron, last_tick from tidegate_schedule")
        for sync, expr, last in rows:
            if self.schedules.get(sync) == expr:
                self._last[sync] = cron.utc(datetime.fromisoformat(last))

    def _save(self, sync: str, tick: datetime) -> None:
        expr = self.schedules[sync]
        with self._store.transaction() as tx:
            tx.execute("delete from tidegate_schedule where sync = ?", (sync,))
            tx.execute("insert into tidegate_schedule (sync, cron, last_tick) values (?, ?, ?)",
                       (sync, expr, tick.isoformat()))
        self._last[sync] = tick

    def tick(self) -> list[str]:
        """Fire every sync whose tick has come since the last one handled; return them."""
        with self._lock:
            now = cron.utc(self._clock())
            fired = []
            for sync, expr in sorted(self.schedules.items()):
                latest = cron.latest_at_or_before(expr, now)
                last = self._last.get(sync)
                if last is None:
                    self._save(sync, latest)  # first sight: wait for the next tick
                    continue
                if latest <= last:
                    continue
                late = cron.next_after(expr, last) < latest  # more than one tick went by
                if self._fire(sync, latest):
                    fired.append(sync)
                    log.info("schedule fired sync %s for %s%s", sync, latest.isoformat(),
                             " (ticks were missed while the server was down)" if late else "")
                else:
                    log.info("schedule skipped sync %s at %s: its last run has not finished",
                             sync, latest.isoformat())
                # Recorded after firing: a crash in between fires again, rather than never.
                self._save(sync, latest)
            return fired

    def next_run(self, sync: str) -> datetime:
        """When ``sync`` fires next."""
        expr = self.schedules[sync]
        now = cron.utc(self._clock())
        last = self._last.get(sync)
        if last is not None and cron.next_after(expr, last) <= now:
            return now  # due: fires at the next tick() call
        return cron.next_after(expr, now)

    def seconds_to_next(self) -> float:
        now = cron.utc(self._clock())
        waits = [(self.next_run(s) - now).total_seconds() for s in self.schedules]
        return min(waits, default=MAX_SLEEP_S)

    def run_forever(self, sleep: Callable[[float], bool] | None = None) -> None:
        """Tick, sleep until the next tick is due, repeat; ``sleep`` returns True to stop."""
        wait = sleep or self._stop.wait
        while True:
            try:
                self.tick()
            except Exception:  # a store hiccup must not end scheduling for the process
                log.exception("the scheduler could not fire its syncs; trying again")
            if wait(min(max(self.seconds_to_next(), 0.01), MAX_SLEEP_S)):
                return

    def start(self) -> None:
        if self.schedules and self._thread is None:
            self._thread = threading.Thread(target=self.run_forever, name="tidegate-scheduler",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
