"""Keeping N investigations in flight: resume, locks, budgets, failures and Ctrl-C.

Each investigation runs in its own thread: it spends nearly all its time waiting for the
backbone, while the model host serves every investigation's experiments. Units start in
order; results are the same as a sequential run's, whatever N is.

- A unit whose ``result.json`` says ``completed`` is skipped (``--force`` redoes it), if its
  history holds that answer and the reporters find their files whole (rebuilding what they
  can); otherwise it is studied again.
- A unit whose files a reporter could not write is not marked completed: it fails, and the
  next run studies it again. A full disk stops the run at once, with one line that names the
  unit, the space needed and what to free.
- A unit another run is studying (its lock is held) is skipped, and the summary says so.
- Under ``--budget-usd``, a unit starts only while the spend so far plus an estimate for the
  units in flight (what each has spent, or the mean cost of a finished unit if more) is
  under the budget.
- A backbone that gives up, or a sandbox that cannot serve a unit, fails that unit only; a
  rejected key (a :class:`UserError`) stops the run once the units in flight end.
- An investigation whose machine went away (a Ray actor, a node) starts again on another,
  at most ``MAX_REASSIGN`` times; nothing of the lost attempt is written as its result.
- Ctrl-C (or SIGTERM) stops at once: the units in flight keep their transcripts so far and
  no ``result.json``, so the same command resumes them.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import traceback
from typing import Any

from maia_core.backbone import Backbone
from maia_core.errors import BackboneError, UserError
from maia_core.execution.sandbox import SessionLost, expect_sessions
from maia_core.files import disk_full_message, no_space
from maia_core.loop.describer import Describer
from maia_core.loop.investigation import Loop
from maia_core.loop.reflection import Reflection, subject_seed
from maia_core.loop.reporter import Reporters, UnitNotSaved
from maia_core.loop.results import (
    UnitLock,
    holds_answer,
    read_result,
    result_from_json,
    unit_dir,
    write_result,
)
from maia_core.loop.state import Investigation, Result, RunInfo
from maia_core.task import Subject, Task
from maia_core.units import Unit

MAX_REASSIGN = 3


class OutOfSpace(UserError):
    """The disk filled up: the run stops at once (finished units are kept)."""


def out_of_space(inv: Investigation, exc: OSError, results: Any) -> OutOfSpace:
    name = getattr(exc, "filename", None)
    writing = f"{name.rsplit('/', 1)[-1] if name else 'the files'} of unit {inv.name}"
    return OutOfSpace(
        disk_full_message(
            exc,
            writing,
            f" (its report needs about as much again): delete old results, {results}/logs or "
            "exemplar stores you no longer need, or give --results on another disk. Then run "
            f"the same command again: finished units are kept, and {inv.name} is studied again.",
        )
    )


class Scheduler:
    def __init__(
        self,
        config: Any,
        execution: Any,
        backbone: Backbone,
        describer_backbone: Backbone,
        reporters: Reporters,
        info: RunInfo,
        *,
        concurrency: int,
        task: Task | None = None,
        evaluator: Backbone | None = None,
        prompts: str = "template",
    ):
        self.config = config
        self.task = task if task is not None else Task()
        self.task_name = getattr(config, "task", "describe") or "describe"
        # Who writes reflection's predictions: the evaluator backbone ("llm"), or templates.
        self.evaluator = evaluator
        self.prompts = prompts
        self.execution = execution
        self.backbone = backbone
        self.describer_backbone = describer_backbone
        self.describer_name = (
            describer_backbone.name if describer_backbone is not backbone else None
        )
        self.reporters = reporters
        self.info = info
        self.concurrency = concurrency
        self._cond = threading.Condition()
        self._in_flight: list[Investigation] = []
        self._finished_costs: list[float] = []
        self._spent_finished = 0.0
        self._fatal: UserError | None = None
        # Set when the disk is full: the run stops at once, without waiting for units in flight.
        self._stop: OutOfSpace | None = None
        self._again: list[Subject] = []
        # Units marked completed whose files were found incomplete: studied again, checked once.
        self._redo: set[Subject] = set()
        self._attempts: dict[Subject, int] = {}
        self.stopped = False

    # -- budget ----------------------------------------------------------------------------
    def _estimate(self, inv: Investigation) -> float | None:
        """What a unit in flight will have cost when it ends; None while nothing is known."""
        if self._finished_costs:
            return max(inv.spent_usd, sum(self._finished_costs) / len(self._finished_costs))
        rounds = inv.rounds_done
        if not rounds:
            return None
        # No unit has finished yet: assume this one uses every round, at its cost so far.
        return max(inv.spent_usd, inv.spent_usd / rounds * self.config.max_rounds)

    def _within_budget(self) -> bool:
        budget = self.config.budget_usd
        if budget is None:
            return True
        estimates = [self._estimate(i) for i in self._in_flight]
        if any(e is None for e in estimates):
            return False  # a unit in flight has no cost yet: wait for its first round
        return self._spent_finished + sum(estimates) < budget

    def _spent(self) -> float:
        return self._spent_finished + sum(i.spent_usd for i in self._in_flight)

    # -- the run ---------------------------------------------------------------------------
    def run(self, units: list[Unit | Subject]) -> list[Investigation]:
        """Investigate each subject (a unit, or for a task of several units, a
        :class:`~maia_core.task.Subject`)."""
        investigations: list[Investigation] = []
        queue = [u if isinstance(u, Subject) else Subject.of(u) for u in units]
        try:
            with self._cond:
                while (queue or self._in_flight or self._again) and self._stop is None:
                    if self._again:  # units whose machine went away go first
                        queue[:0] = self._again
                        self._again.clear()
                    # kernels kept warm for the investigations still to start, and no more
                    expect_sessions(self.execution, len(queue))
                    while queue and len(self._in_flight) < self.concurrency and not self._fatal:
                        inv = self._investigation(queue[0])
                        if (
                            not self.config.force
                            and inv.subject not in self._redo
                            and self._resumable(inv)
                        ):
                            queue.pop(0)
                            investigations.append(inv)
                            inv.skip_reason = "completed"
                            self._done()
                            self.reporters.unit_skipped(inv)
                            continue
                        if self._stop is not None or not self._within_budget():
                            break
                        lock = UnitLock(inv.out_dir)
                        try:
                            holder = lock.acquire()
                        except OSError as exc:
                            if no_space(exc):
                                self._stop = out_of_space(inv, exc, self.config.results)
                                break
                            # Its folder cannot be written: nothing of it could be saved.
                            queue.pop(0)
                            self._fail(inv, exc, "its folder cannot be written: ")
                            sys.stderr.write(f"maia: {inv.name}: {inv.result.error}\n")
                            investigations.append(inv)
                            self._done()
                            continue
                        queue.pop(0)
                        if holder is not None:
                            inv.skip_reason = f"being studied by another run: {holder}"
                            self.info.locked.append(inv.subject)
                            investigations.append(inv)
                            self._done()
                            self.reporters.unit_skipped(inv)
                            continue
                        if not self._attempts.get(inv.subject):
                            investigations.append(inv)
                        else:  # a second attempt replaces the lost one in the list
                            at = next(
                                k for k, i in enumerate(investigations) if i.subject == inv.subject
                            )
                            investigations[at] = inv
                        # those left, and this one, opening (its thread takes its kernel
                        # soon): units skipped as completed take none
                        expect_sessions(self.execution, len(queue), opening=1)
                        self._start(inv, lock)
                    if not self._in_flight or self._stop is not None:
                        break  # the budget (or a fatal error) keeps the rest from starting
                    self._cond.wait(timeout=0.5)
            if self._stop is not None:
                raise self._stop  # a full disk: stop now, the units in flight resume next time
        except BaseException:
            self.stopped = True  # Ctrl-C: the threads must not write results any more
            raise
        if self._fatal is not None:
            raise self._fatal
        self.info.not_started.extend(queue)
        self.info.spent_usd = self._spent()
        return investigations

    def _investigation(self, subject: Subject) -> Investigation:
        inv = Investigation(
            subject.unit,
            self.config.target,
            self.backbone.name,
            unit_dir(
                self.config.results,
                self.backbone.slug,
                self.config.target,
                subject,
                self.task_name,
            ),
            describer=self.describer_name,
            tools=dict(self.info.tools),
            target_options=dict(self.config.target_options),
            bases=[list(b) for b in self.config.bases],
            provenance=dict(self.info.provenance),
            containment=self.info.containment,
            subject=subject,
            task=self.task_name,
        )
        inv.skip_reason = None
        return inv

    def _resumable(self, inv: Investigation) -> bool:
        """Whether a unit is completed and whole on disk, so it can be skipped: its
        ``result.json`` says completed, for this unit; its history ends with that answer (when
        there is a history to check); and each reporter finds its files there and agreeing,
        rebuilding what it can. Otherwise the unit is studied again, and stderr says why."""
        row = read_result(inv.out_dir)
        if row is None or row.get("status") != "completed":
            return False
        inv.result = result_from_json(row)
        reason = None
        if (row.get("layer"), row.get("unit")) != (inv.unit.layer, inv.unit.index):
            reason = "its result.json is another unit's"
        elif (inv.out_dir / "history.json").exists() and not holds_answer(
            inv.out_dir, inv.result, self.task
        ):
            reason = "its history.json does not end with the answer result.json gives"
        else:
            inv.threshold = str(row.get("threshold") or "")
            inv.ground_truth = row.get("ground_truth")
            reason = self.reporters.resume_unit(inv)
            if inv.save_error is not None and no_space(inv.save_error):
                self._stop = out_of_space(inv, inv.save_error, self.config.results)
        if reason is None:
            return True
        self._redo.add(inv.subject)
        if self._stop is None:
            sys.stderr.write(
                f"maia: {inv.name} was marked completed, but {reason}; studying it again.\n"
            )
        inv.result, inv.save_error = None, None
        return False

    def _done(self) -> None:
        self.info.done += 1
        self.info.spent_usd = self._spent()
        self.info.in_flight = list(self._in_flight)
        self.reporters.progress(self.info)

    def _start(self, inv: Investigation, lock: UnitLock) -> None:
        self._in_flight.append(inv)
        self.info.in_flight = list(self._in_flight)
        thread = threading.Thread(
            target=self._investigate, args=(inv, lock), name=f"maia-{inv.name}", daemon=True
        )
        thread.start()

    def _investigate(self, inv: Investigation, lock: UnitLock) -> None:
        lost = False
        try:
            lost = self._study(inv)
        finally:
            lock.release()
            with self._cond:
                self._in_flight.remove(inv)
                if lost:
                    self._attempts[inv.subject] = self._attempts.get(inv.subject, 0) + 1
                    self._again.append(inv.subject)
                else:
                    if inv.result is not None and inv.result.rounds:
                        cost = inv.result.usage.cost_usd or 0.0
                        self._finished_costs.append(cost)
                        self._spent_finished += cost
                    self._done()
                self._cond.notify_all()

    def _study(self, inv: Investigation) -> bool:
        """Investigate; True when the investigation was lost with its machine and must start
        again elsewhere."""
        describer = Describer(self.describer_backbone)
        session = self.execution.session(describer)
        loop = Loop(
            self.backbone,
            session,
            self.reporters,
            max_rounds=self.config.max_rounds,
            describer=describer,
            task=self.task,
            reflection=self._reflection(inv),
        )
        # A completion marker left from an earlier study (--force, or one found incomplete)
        # must not outlive this one's files.
        with contextlib.suppress(OSError):
            (inv.out_dir / "result.json").unlink(missing_ok=True)
        self.reporters.unit_started(inv)
        try:
            loop.run(inv)
        except UnitNotSaved:
            pass  # inv.save_error says why; handled below, after the session is closed
        except SessionLost as exc:
            if self._attempts.get(inv.subject, 0) + 1 < MAX_REASSIGN:
                sys.stderr.write(f"maia: {inv.name}: {exc}; starting it again on another\n")
                return True
            self._fail(inv, exc)
        except UserError as exc:
            # A rejected key: every unit would fail the same way. Stop starting units.
            with self._cond:
                self._fatal = self._fatal or exc
            self._fail(inv, exc)
        except (BackboneError, RuntimeError) as exc:
            # The backbone gave up, or the sandbox could not serve this unit: mark it failed
            # and go on with the others.
            if not isinstance(exc, BackboneError) and not self.stopped:
                traceback.print_exc(file=sys.stderr)
            self._fail(inv, exc)
        except Exception as exc:  # noqa: BLE001 - a bug must cost this unit, not the run
            if not self.stopped:
                traceback.print_exc(file=sys.stderr)
            self._fail(inv, exc)
        finally:
            session.close()
        if self.stopped:
            return False  # interrupted: no result.json, so the unit resumes next time
        if inv.save_error is not None:
            if self._full(inv, inv.save_error):
                return False
            self._fail(inv, inv.save_error, "its files could not be written: ")
        try:
            inv.ground_truth = self._ground_truth(inv.subject)
        except Exception as exc:  # noqa: BLE001 - the result still counts without it
            sys.stderr.write(f"maia: could not read the ground truth of {inv.name}: {exc}\n")
        self.reporters.unit_finished(inv)
        if inv.save_error is not None:
            if self._full(inv, inv.save_error):
                return False
            self._fail(inv, inv.save_error, "its files could not be written: ")
        try:
            # The completion marker, after every reporter's files; a unit not saved gets a
            # failed result (if even that can be written), so the next run studies it again.
            write_result(inv)
        except OSError as exc:
            inv.save_error = inv.save_error or exc
            self._fail(inv, exc, "its result.json could not be written: ")
            if not self._full(inv, exc):
                sys.stderr.write(f"maia: {inv.name}: {inv.result.error}\n")
        return False

    def _ground_truth(self, subject: Subject) -> dict[str, Any] | None:
        """What the subject's units are known to do (read after the answer); a pair's truths
        are ``{"units": [truth, truth]}``."""
        if len(subject.units) == 1:
            return self.execution.ground_truth(subject.unit)
        truths = [self.execution.ground_truth(u) for u in subject.units]
        return {"units": truths} if any(t is not None for t in truths) else None

    def _reflection(self, inv: Investigation) -> Reflection | None:
        """Reflection's checks for this investigation (``--reflect N``), or None."""
        rounds = getattr(self.config, "reflect", 0) or 0
        if rounds <= 0:
            return None
        subject = inv.subject

        def measure(prompts: list[str], seed: int) -> tuple[list[float], list[Any]]:
            return self.execution.render_and_measure(subject, prompts, seed)

        return Reflection(
            self.task,
            measure,
            rounds=rounds,
            threshold=self.config.reflect_threshold,
            k=self.config.reflect_k,
            prompts=self.prompts,
            evaluator=self.evaluator,
            seed=subject_seed(self.config.seed, subject),
        )

    def _full(self, inv: Investigation, exc: BaseException) -> bool:
        """A full disk stops the run (once), naming this unit; True if it did."""
        if not no_space(exc):
            return False
        with self._cond:
            self._stop = self._stop or out_of_space(inv, exc, self.config.results)
            self._cond.notify_all()
        return True

    @staticmethod
    def _fail(inv: Investigation, exc: BaseException, why: str = "") -> None:
        inv.result = inv.result or Result("failed")
        if inv.result.status == "failed" and inv.result.error and why:
            return  # the reporters already said why
        inv.result.status = "failed"
        inv.result.error = f"{why}{type(exc).__name__}: {exc}"
