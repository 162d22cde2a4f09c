"""The reporter interface: receives investigation events and writes outputs."""

from __future__ import annotations

import sys
import threading
import traceback

from maia_core.loop.state import Investigation, RunInfo
from maia_core.transcript import Message


class Reporter:
    """Override the events you need; each gets the live :class:`Investigation`.

    Reporters run in the main process. Write files with :mod:`maia_core.files` so they are
    atomic; the unit's folder is ``investigation.out_dir``. Events of concurrent
    investigations arrive one at a time (:class:`Reporters` serialises them).
    """

    def run_started(self, run: RunInfo) -> None:
        pass

    def unit_started(self, investigation: Investigation) -> None:
        pass

    def unit_skipped(self, investigation: Investigation) -> None:
        """The unit already has a completed result on disk and was not run again."""

    def message_added(self, investigation: Investigation, message: Message) -> None:
        pass

    def unit_finished(self, investigation: Investigation) -> None:
        """``investigation.result`` is set."""

    def progress(self, run: RunInfo) -> None:
        """Units done, in flight, spend: called whenever they change."""

    def run_finished(self, run: RunInfo, investigations: list[Investigation]) -> None:
        pass

    def close(self) -> None:
        pass


class Reporters(Reporter):
    """Several reporters behind one: each event goes to each, in order, one event at a time.

    A reporter that raises is reported on stderr (once per reporter and event) and the others
    go on: a broken report must never stop a study.
    """

    def __init__(self, reporters: list[Reporter]):
        self.reporters = list(reporters)
        self._lock = threading.RLock()
        self._warned: set[tuple[int, str]] = set()
        self.errors = 0

    def _each(self, event: str, *args: object) -> None:
        with self._lock:
            for reporter in self.reporters:
                try:
                    getattr(reporter, event)(*args)
                except Exception as exc:  # noqa: BLE001 - reporters must not abort a run
                    self.errors += 1
                    key = (id(reporter), event)
                    if key not in self._warned:
                        self._warned.add(key)
                        where = "".join(traceback.format_tb(exc.__traceback__)[-1:]).strip()
                        sys.stderr.write(
                            f"maia: the {type(reporter).__name__} reporter failed in {event} "
                            f"({type(exc).__name__}: {exc}); the run goes on. {where}\n"
                        )

    def run_started(self, run: RunInfo) -> None:
        self._each("run_started", run)

    def unit_started(self, investigation: Investigation) -> None:
        self._each("unit_started", investigation)

    def unit_skipped(self, investigation: Investigation) -> None:
        self._each("unit_skipped", investigation)

    def message_added(self, investigation: Investigation, message: Message) -> None:
        self._each("message_added", investigation, message)

    def unit_finished(self, investigation: Investigation) -> None:
        self._each("unit_finished", investigation)

    def progress(self, run: RunInfo) -> None:
        self._each("progress", run)

    def run_finished(self, run: RunInfo, investigations: list[Investigation]) -> None:
        self._each("run_finished", run, investigations)

    def close(self) -> None:
        self._each("close")
