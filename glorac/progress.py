"""Progress bars (rich) for the long stages: training steps, search candidates, evaluation batches.

Every method is a no-op when the bar is disabled (other ranks, ``--no-progress``), so
callers never branch on it.
"""

from __future__ import annotations

from typing import Callable, Optional


def score_text(task: str, score: dict) -> str:
    """A score as the bars show it: accuracy and loss, or for a causal LM token loss and perplexity."""
    if task == "causal-lm":
        return f"loss {score['loss']:.4f}  ppl {score['perplexity']:.3f}"
    return f"acc {score['accuracy']:.4f}  loss {score['loss']:.4f}"


class TrainProgress:
    """A rich progress bar with loss, lr and examples/s (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int, done: int):
        self.enabled, self.total, self.done = enabled, total, done
        self.step_info = ""
        self.validation = ""  # the last epoch's val score, kept on the line until the next one

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
        self.step_info = f"loss {loss:.4f}  lr {lr:.2e}  {rate:.1f} ex/s"
        self._show(advance=1)

    def validated(self, epoch: int, task: str, score: dict) -> None:
        """Show an epoch's val score on the line (it stays there while the next epoch runs)."""
        self.validation = f"  | epoch {epoch} val {score_text(task, score)}"
        self._show()

    def _show(self, advance: int = 0) -> None:
        self.bar.update(self.task, advance=advance, info=self.step_info + self.validation)

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


class EvalProgress:
    """A rich progress bar for ``glorac eval``: batches done and the running score (accuracy,
    or for a causal LM token loss and perplexity). On stderr and transient, so that stdout
    holds the result alone (``--json`` stays parseable) and a finished run leaves no bar.

    :attr:`on_batch` is the callback :func:`glorac.scoring.accuracy` takes: None when the bar
    is disabled, so that a quiet evaluation keeps its sums on the device (no per-batch sync).
    ``console``: a rich Console to draw on (tests force a terminal with one).
    """

    def __init__(self, enabled: bool, total: int, task: str, console=None):
        self.enabled, self.total, self.kind, self.console = enabled, total, task, console

    def __enter__(self) -> "EvalProgress":
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("eval"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                console=self.console or Console(stderr=True), transient=True)
            self.task = self.bar.add_task("eval", total=self.total, info="")
            self.bar.__enter__()
        return self

    @property
    def on_batch(self) -> Optional[Callable[[dict], None]]:
        return self._advance if self.enabled else None

    def _advance(self, running: dict) -> None:
        self.bar.update(self.task, advance=1, info=score_text(self.kind, running))

    def __exit__(self, *exc) -> bool:
        if self.enabled:
            self.bar.__exit__(*exc)
        return False
