"""`glorac search` on the command line: the best's share of the budget, the progress bar, --no-fill."""

from __future__ import annotations

import re

import pytest

import glorac
from glorac.progress import SearchProgress
from tests.reference import run_cli
from tests.test_train import DATA, SPEC


@pytest.fixture()
def compiled(tmp_path, capsys):
    spec = tmp_path / "digits.glora"
    spec.write_text(SPEC)  # budget 3K, population 8, 2 generations of 8 children
    out = tmp_path / "sn.pt"
    code, _, err = run_cli(capsys, "compile", spec, "--model", "tests.test_train:digit_net", "-o", out)
    assert code == 0, err
    return out


def test_search_prints_the_best_params_against_the_budget(compiled, tmp_path, capsys):
    out = tmp_path / "s.pt"
    code, stdout, err = run_cli(capsys, "search", compiled, *DATA, "-o", out, "--no-progress")
    assert code == 0, err
    search = glorac.load(out).history.search
    best = search.best_params
    m = re.search(r"best: val acc (\d\.\d{4}), ([\d,]+) adapter params of a 3,000 budget \(([\d.]+)%\)", stdout)
    assert m, stdout
    assert int(m.group(2).replace(",", "")) == best <= 3000
    assert float(m.group(3)) == pytest.approx(100 * best / 3000, abs=0.05)
    assert float(m.group(1)) == pytest.approx(search.best_accuracy, abs=5e-5)
    assert search.settings.fill is True
    assert "cand/s" not in stdout + err  # --no-progress


def test_no_fill_is_the_paper_procedure(compiled, tmp_path, capsys):
    out = tmp_path / "s.pt"
    code, _, err = run_cli(capsys, "search", compiled, *DATA, "-o", out, "--no-progress", "--no-fill")
    assert code == 0, err
    assert glorac.load(out).history.search.settings.fill is False


def test_progress_ticks_per_candidate_with_generation_best_and_rate(compiled, tmp_path, monkeypatch):
    from glorac.workflow import search_checkpoint

    seen = []
    real = SearchProgress.advance

    def spy(self, fitness, count=1):
        real(self, fitness, count)
        seen.append((self.generation, self.done, self.best, self.enabled))

    monkeypatch.setattr(SearchProgress, "advance", spy)
    _, result = search_checkpoint(str(compiled), "builtin:digits", output=str(tmp_path / "s.pt"),
                                  data_options={"image_size": 8}, progress=True)
    assert [d for _, d, _, _ in seen] == list(range(1, len(result.evaluated) + 1))  # one tick per candidate
    assert [g for g, _, _, _ in seen] == [c.generation for c in result.evaluated]
    assert seen[-1][2] == result.best.fitness and all(e for *_, e in seen)


def test_progress_bar_renders_and_is_silent_when_disabled(capsys):
    with SearchProgress(False, 10, 2) as bar:
        bar.next_generation()
        bar.advance(0.5)
    assert capsys.readouterr() == ("", "")
    assert bar.done == 1 and bar.best == 0.5
    with SearchProgress(True, 10, 2) as bar:
        for g, values in enumerate([[0.1, 0.4], [0.3]]):
            bar.next_generation()
            for v in values:
                bar.advance(v)
        bar.advance(0.2, count=2)  # another rank's share
    assert bar.done == 5 and bar.best == 0.4
    assert bar.bar.tasks[0].total == 5  # ended early: closed at what was done
    assert "gen 1/2" in bar.bar.tasks[0].fields["info"] and "best 0.4000" in bar.bar.tasks[0].fields["info"]
