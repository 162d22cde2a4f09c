"""The investigation loop and runs: prompts, the loop, the describer's accounts, reporters'
interface, and ``run()`` (unit selection, resume, locks, concurrency, budgets)."""
