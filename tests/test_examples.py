"""Every script in examples/ runs as a user would run it: `python examples/NAME.py --quick --out DIR`.

Examples are discovered by glob, so a new one is tested as soon as it exists: it must exit 0,
print the fragments listed for it in EXPECTED (an example not listed only needs to exit 0),
leave the files listed in FILES, and write nothing outside its --out directory (not in the
repository, not in the home directory).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p for p in (REPO / "examples").glob("*.py") if not p.name.startswith("_"))

#: Fragments each example's output must contain (stdout and stderr together).
EXPECTED: dict[str, tuple[str, ...]] = {
    "vision_search": ("data: 10 classes", "searched: best val accuracy", "folded into EfficientNet",
                      "test accuracy of the folded model:"),
    "text_classification": ("data: 7 topics", "searched: best val accuracy", "test accuracy of the folded model:",
                            "predictions of the reloaded model"),
    "causal_lm": ("$ glorac compile", "best: val loss", "loads into the stock", "perplexity",
                  "reloaded LlamaForCausalLM", "greedy continuations"),
    "new_architecture": ("unknown kind `vectr`", "did you mean `vector`?", "matches no layer",
                         "Closest layer names: blocks.0.channel_mlp", "Linear (functional)",
                         "at init the supernet computes the base model exactly: True",
                         "folded test accuracy", "same logits"),
}

#: Files (relative to --out) each example must leave behind.
FILES: dict[str, tuple[str, ...]] = {
    "vision_search": ("vision_search.glora", "folded.pt", "digits/train/0"),
    "text_classification": ("minilm.glora", "folded/config.json", "folded/tokenizer.json"),
    "causal_lm": ("folded/config.json", "folded/tokenizer.json", "structure.json", "data/train.jsonl"),
    "new_architecture": ("mixer.glora",),
}

# What Python itself or a concurrent editor may create in the tree; everything else is news.
_IGNORED = {".git", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache", ".hypothesis"}


def _tree(root: Path) -> set[str]:
    found = set()
    for parent, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _IGNORED and not d.endswith(".egg-info")]
        found.update(os.path.relpath(os.path.join(parent, f), root) for f in files)
    return found


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_quick(script: Path, tmp_path: Path) -> None:
    out, home = tmp_path / "out", tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HOME": str(home),
           "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1"}
    for cache in ("XDG_CACHE_HOME", "HF_HOME", "TORCH_HOME", "MPLCONFIGDIR"):
        env.pop(cache, None)  # left to default under $HOME, where the check below looks
    before = _tree(REPO)
    start = time.time()
    done = subprocess.run([sys.executable, str(script), "--quick", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{script.name} exited {done.returncode}:\n{output[-4000:]}"
    missing = [f for f in EXPECTED.get(script.stem, ()) if f not in output]
    assert not missing, f"{script.name} did not print {missing}:\n{output[-4000:]}"
    absent = [f for f in FILES.get(script.stem, ()) if not (out / f).exists()]
    assert not absent, f"{script.name} left no {absent} in --out"

    new = sorted(p for p in _tree(REPO) - before if (REPO / p).stat().st_mtime >= start - 1)
    assert not new, f"{script.name} wrote outside --out, in the repository: {new[:10]}"
    stray = sorted(_tree(home))
    assert not stray, f"{script.name} wrote outside --out, in $HOME: {stray[:10]}"
