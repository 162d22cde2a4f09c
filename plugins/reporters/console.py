"""The ``console`` reporter: live progress with rich, and a summary table at the end."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from maia_core import hookimpl
from maia_core.loop.investigation import Investigation
from maia_core.loop.reporter import Reporter
from maia_core.transcript import Message

STYLE = {"completed": "green", "incomplete": "yellow", "failed": "red", "skipped": "dim"}


@hookimpl
def register_reporters(register):
    register("console", ConsoleReporter, help="Live progress and a summary table in the terminal")


class ConsoleReporter(Reporter):
    def __init__(self, results: Path, console: Console | None = None, **options: str):
        self.results = Path(results)
        self.console = console or Console()
        self.progress: Progress | None = None
        self.task = None
        self.skipped: set[int] = set()

    def run_started(self, run) -> None:
        describer = getattr(run, "describer", None)
        self.console.print(
            f"[bold]maia[/]: {len(run.units)} unit(s) of [cyan]{run.target}[/] with [cyan]{run.backbone}[/]"
            + (f" (describer [cyan]{describer}[/])" if describer else "")
            + f" -> {self.results}"
        )
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task("starting", total=len(run.units))

    def _describe(self, inv: Investigation, round_no: int | None = None) -> str:
        where = f"{inv.unit.layer}={inv.unit.index}"
        return where if round_no is None else f"{where} round {round_no}"

    def unit_started(self, inv: Investigation) -> None:
        if self.progress:
            self.progress.update(self.task, description=self._describe(inv))

    def message_added(self, inv: Investigation, message: Message) -> None:
        if self.progress and message.role == "assistant":
            self.progress.update(
                self.task, description=self._describe(inv, message.meta.get("round"))
            )

    def unit_skipped(self, inv: Investigation) -> None:
        self.skipped.add(id(inv))
        self.console.print(
            f"[dim]- {self._describe(inv)} already completed; skipped (use --force to redo)[/]"
        )
        if self.progress:
            self.progress.advance(self.task)

    def unit_finished(self, inv: Investigation) -> None:
        r = inv.result
        mark = {"completed": "✓", "incomplete": "…", "failed": "✗"}.get(r.status, "?")
        detail = f": {r.label}" if r.label else (f": {r.error}" if r.error else "")
        self.console.print(
            f"[{STYLE.get(r.status, 'white')}]{mark} {self._describe(inv)} {r.status}[/] "
            f"in {r.rounds} round(s), {r.wall_time_s:.1f} s{detail}",
            highlight=False,
        )
        if self.progress:
            self.progress.advance(self.task)

    def run_finished(self, run, investigations: list[Investigation]) -> None:
        self.close()
        table = Table(title="maia run summary", show_footer=True)
        cols = ["unit", "status", "rounds", "input tokens", "output tokens", "cost (USD)", "label"]
        totals = {"rounds": 0, "in": 0, "out": 0, "cost": 0.0, "known_cost": False}
        rows = []
        for inv in investigations:
            if id(inv) in self.skipped or inv.result is None:
                rows.append(
                    [f"{inv.unit.layer}={inv.unit.index}", "[dim]skipped[/]", "", "", "", "", ""]
                )
                continue
            r = inv.result
            totals["rounds"] += r.rounds
            totals["in"] += r.usage.input_tokens
            totals["out"] += r.usage.output_tokens
            if r.usage.cost_usd is not None:
                totals["cost"] += r.usage.cost_usd
                totals["known_cost"] = True
            rows.append(
                [
                    f"{inv.unit.layer}={inv.unit.index}",
                    f"[{STYLE.get(r.status, 'white')}]{r.status}[/]",
                    str(r.rounds),
                    f"{r.usage.input_tokens:,}",
                    f"{r.usage.output_tokens:,}",
                    "n/a" if r.usage.cost_usd is None else f"{r.usage.cost_usd:.4f}",
                    r.label or "",
                ]
            )
        footers = [
            "total",
            "",
            str(totals["rounds"]),
            f"{totals['in']:,}",
            f"{totals['out']:,}",
            f"{totals['cost']:.4f}" if totals["known_cost"] else "n/a",
            "",
        ]
        for col, foot in zip(cols, footers):
            table.add_column(col, footer=foot)
        for row in rows:
            table.add_row(*row)
        self.console.print(table)
        budget = getattr(run.config, "budget_usd", None)
        if budget is not None:
            spent = getattr(run, "spent_usd", 0.0)
            waiting = getattr(run, "not_started", [])
            if waiting:
                self.console.print(
                    f"[yellow]Budget of ${budget:.2f} reached (this run spent ${spent:.4f}): "
                    f"{len(waiting)} unit(s) not started. Run the same command with a higher "
                    "--budget-usd to continue.[/]",
                    highlight=False,
                )
            else:
                self.console.print(
                    f"This run spent ${spent:.4f} of its ${budget:.2f} budget.", highlight=False
                )

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
