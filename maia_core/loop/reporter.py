"""The reporter interface: receives investigation events and writes outputs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from maia_core.transcript import Message

if TYPE_CHECKING:
    from maia_core.loop.investigation import Investigation
    from maia_core.loop.run import RunInfo


class Reporter:
    """Override the events you need; each gets the live :class:`Investigation`.

    Reporters run in the main process. Write files with :mod:`maia_core.files` so they are
    atomic; the unit's folder is ``investigation.out_dir``.
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

    def run_finished(self, run: RunInfo, investigations: list[Investigation]) -> None:
        pass

    def close(self) -> None:
        pass


class Reporters(Reporter):
    """Several reporters behind one: each event goes to each, in order."""

    def __init__(self, reporters: list[Reporter]):
        self.reporters = list(reporters)

    def _each(self, event: str, *args: object) -> None:
        for reporter in self.reporters:
            getattr(reporter, event)(*args)

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

    def run_finished(self, run: RunInfo, investigations: list[Investigation]) -> None:
        self._each("run_finished", run, investigations)

    def close(self) -> None:
        self._each("close")
