"""Progress bars (rich) for the long stages: training steps and search candidates.

Every method is a no-op when the bar is disabled (other ranks, ``--no-progress``), so
callers never branch on it.
"""

from __future__ import annotations


class TrainProgress:
    """A rich progress bar with loss, lr and examples/s (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int, done: int):
        self.enabled, self.total, self.done = enabled, total, done

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeRemainingColumn())
        self.task = self.bar.add_task("train", total=self.total, completed=self.done, info="")
        self.bar.__enter__()
        return self

    def update(self, *, loss: float, lr: float, rate: float) -> None:
        self.bar.update(self.task, advance=1, info=f"loss {loss:.4f}  lr {lr:.2e}  {rate:.1f} ex/s")

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)
        return False


class SearchProgress:
    """A rich progress bar for the search: one tick per candidate, with the generation, the
    best fitness so far and candidates/s. Every method is a no-op when disabled (other
    ranks, ``--no-progress``), so the caller never branches on it.

    ``total`` is an upper bound (population plus every generation's children): a search
    that runs out of new structures ends early, and the bar is then closed at what was done.
    """

    def __init__(self, enabled: bool, total: int, generations: int):
        self.enabled, self.total, self.generations = enabled, total, generations
        self.done, self.generation, self.best = 0, -1, float("-inf")

    def __enter__(self) -> "SearchProgress":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("search"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeElapsedColumn())
            self.task = self.bar.add_task("search", total=self.total, info="")
            self.bar.__enter__()
        return self

    def next_generation(self) -> None:
        self.generation += 1

    def advance(self, fitness: float, count: int = 1) -> None:
        """``count`` more candidates evaluated, the best of them scoring ``fitness``."""
        self.done += count
        self.best = max(self.best, fitness)
        if self.enabled:
            elapsed = self.bar.tasks[0].elapsed or 0.0
            rate = f"{self.done / elapsed:.2f}" if elapsed > 0 else "-"
            self.bar.update(self.task, completed=self.done, info=f"gen {self.generation}/{self.generations}  "
                                                                 f"best {self.best:.4f}  {rate} cand/s")

    def __exit__(self, *exc) -> bool:
        if self.enabled:
            if exc[0] is None:
                self.bar.update(self.task, total=self.done)  # ended early: show it complete
            self.bar.__exit__(*exc)
        return False
