"""The reporter interface: receives investigation events and writes outputs."""

from __future__ import annotations

import sys
import threading
import traceback

from maia_core.files import no_space
from maia_core.loop.state import Investigation, RunInfo
from maia_core.transcript import Message


class UnitNotSaved(Exception):
    """A reporter could not write a unit's files: the unit is not complete, so it is not
    marked completed, and the next run studies it again."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


class Reporter:
    """Override the events you need; each gets the live :class:`Investigation`.

    Reporters run in the main process. Write files with :mod:`maia_core.files` so they are
    atomic; the unit's folder is ``investigation.out_dir``. Events of concurrent
    investigations arrive one at a time (:class:`Reporters` serialises them).

    Set ``unit_files = True`` when what the reporter writes is part of a unit's results (as
    ``history.json`` and ``report.html`` are): a unit whose files it could not write is then
    not marked completed. A failure of any other reporter (a logger, a dashboard) is reported
    and costs no unit, unless the disk is full.
    """

    unit_files = False

    def run_started(self, run: RunInfo) -> None:
        pass

    def unit_started(self, investigation: Investigation) -> None:
        pass

    def unit_skipped(self, investigation: Investigation) -> None:
        """The unit already has a completed result on disk and was not run again."""

    def resume_unit(self, investigation: Investigation) -> str | None:
        """A unit whose ``result.json`` says ``completed``, before it is skipped: check this
        reporter's files of it against the result (``investigation.result``, read from disk),
        and write again those that can be rebuilt from a complete history. Return None when
        they are all there and agree; else why not, and the unit is studied again."""
        return None

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
    go on: a broken report must never stop a study. But a unit whose files a ``unit_files``
    reporter could not write is not complete: the error is kept on the investigation
    (``save_error``), its status becomes ``failed`` at once (so the reporters after it say so),
    and the core does not mark it completed. A full disk, whichever reporter found it, is not
    reported here: the run stops with one line instead.
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
                    inv = args[0] if args and isinstance(args[0], Investigation) else None
                    if (
                        inv is not None
                        and event != "unit_skipped"
                        and (getattr(reporter, "unit_files", False) or no_space(exc))
                    ):
                        self._not_saved(inv, reporter, exc)
                    else:
                        inv = None  # for the message: no unit is lost to this failure
                    if no_space(exc):
                        continue  # the run stops, with one line that says what to free
                    key = (id(reporter), event)
                    if key not in self._warned:
                        self._warned.add(key)
                        where = "".join(traceback.format_tb(exc.__traceback__)[-1:]).strip()
                        unit = (
                            f"; {inv.name} is not saved and the next run studies it again"
                            if inv is not None
                            else ""
                        )
                        sys.stderr.write(
                            f"maia: the {type(reporter).__name__} reporter failed in {event} "
                            f"({type(exc).__name__}: {exc}){unit}; the run goes on. {where}\n"
                        )

    @staticmethod
    def _not_saved(inv: Investigation, reporter: Reporter, exc: BaseException) -> None:
        if inv.save_error is None:
            inv.save_error = exc
        if inv.result is not None and inv.result.status != "failed":
            inv.result.status = "failed"
            inv.result.error = (
                f"its files could not be written: the {type(reporter).__name__} reporter "
                f"failed ({type(exc).__name__}: {exc})"
            )

    def resume_unit(self, investigation: Investigation) -> str | None:
        """The first reporter's reason not to skip the unit, or None. A reporter that raises
        (it could not rebuild a file) is a reason too."""
        with self._lock:
            for reporter in self.reporters:
                try:
                    reason = reporter.resume_unit(investigation)
                except Exception as exc:  # noqa: BLE001 - the unit is studied again instead
                    if investigation.save_error is None:
                        investigation.save_error = exc
                    reason = f"the {type(reporter).__name__} reporter could not rebuild its files ({type(exc).__name__}: {exc})"
                if reason:
                    return reason
        return None

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
