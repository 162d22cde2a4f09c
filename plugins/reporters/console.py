"""The ``console`` reporter: live progress with rich, and a summary table at the end."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from maia_core import hookimpl
from maia_core.loop.reporter import Reporter
from maia_core.loop.state import Investigation
from maia_core.transcript import Message

if TYPE_CHECKING:  # rich is imported when a run starts, not with maia --help
    from rich.console import Console
    from rich.progress import Progress

STYLE = {"completed": "green", "incomplete": "yellow", "failed": "red", "skipped": "dim"}


@hookimpl
def register_reporters(register):
    register("console", ConsoleReporter, help="Live progress and a summary table in the terminal")


class ConsoleReporter(Reporter):
    """A progress bar over the run (units done and left, spend, ETA) and a line for each unit
    in flight with its round; a line per finished unit; a summary table at the end."""

    def __init__(self, results: Path, console: Console | None = None, **options: str):
        from rich.console import Console

        self.results = Path(results)
        self.console = console or Console()
        self.bar: Progress | None = None
        self.task = None
        self.units: dict[int, object] = {}

    def run_started(self, run) -> None:
        describer = getattr(run, "describer", None)
        tools = getattr(run, "tools", {}) or {}
        shown = ", ".join(f"{c}={i}" if c != i else c for c, i in sorted(tools.items()))
        self.console.print(
            f"[bold]maia[/]: {len(run.units)} unit(s) of [cyan]{run.target}[/] with [cyan]{run.backbone}[/]"
            + (f" (describer [cyan]{describer}[/])" if describer else "")
            + f", {getattr(run, 'concurrency', 1)} at a time -> {self.results}",
            highlight=False,
        )
        if shown:
            self.console.print(f"[dim]tools: {shown}[/]", highlight=False)
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[spent]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.bar.start()
        self.task = self.bar.add_task("units", total=len(run.units), spent="")

    def unit_started(self, inv: Investigation) -> None:
        if self.bar:
            self.units[id(inv)] = self.bar.add_task(
                f"  {inv.name}", total=None, spent="", start=True
            )

    def message_added(self, inv: Investigation, message: Message) -> None:
        task = self.units.get(id(inv))
        if self.bar and task is not None and message.role == "assistant":
            self.bar.update(task, description=f"  {inv.name} round {message.meta.get('round')}")

    def progress(self, run) -> None:
        if self.bar is not None and self.task is not None:
            spent = getattr(run, "spent_usd", 0.0)
            self.bar.update(self.task, completed=run.done, spent=f"${spent:.4f}" if spent else "")

    def unit_skipped(self, inv: Investigation) -> None:
        reason = inv.skip_reason or "completed"
        if reason == "completed":
            text = f"[dim]- {inv.name} already completed; skipped (use --force to redo)[/]"
        else:
            text = f"[yellow]- {inv.name} skipped: {reason}[/]"
        self.console.print(text, highlight=False)

    def unit_finished(self, inv: Investigation) -> None:
        task = self.units.pop(id(inv), None)
        if self.bar and task is not None:
            self.bar.remove_task(task)
        r = inv.result
        mark = {"completed": "✓", "incomplete": "…", "failed": "✗"}.get(r.status, "?")
        detail = f": {r.label}" if r.label else (f": {r.error}" if r.error else "")
        self.console.print(
            f"[{STYLE.get(r.status, 'white')}]{mark} {inv.name} {r.status}[/] "
            f"in {r.rounds} round(s), {r.wall_time_s:.1f} s{detail}",
            highlight=False,
        )

    def run_finished(self, run, investigations: list[Investigation]) -> None:
        from rich.table import Table

        self.close()
        table = Table(title="maia run summary", show_footer=True)
        cols = ["unit", "status", "rounds", "input tokens", "output tokens", "cost (USD)", "label"]
        totals = {"rounds": 0, "in": 0, "out": 0, "cost": 0.0, "known_cost": False}
        rows = []
        for inv in investigations:
            if inv.skip_reason or inv.result is None:
                what = "skipped" if inv.skip_reason in (None, "completed") else "locked"
                rows.append([inv.name, f"[dim]{what}[/]", "", "", "", "", ""])
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
                    inv.name,
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
        locked = getattr(run, "locked", [])
        if locked:
            self.console.print(
                f"[yellow]{len(locked)} unit(s) were being studied by another run and were skipped; "
                "run the same command again once it ends.[/]",
                highlight=False,
            )
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
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
