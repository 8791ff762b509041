"""Plausible user mistakes walked through the real CLI (issue 11).

Bad input never becomes an internal error, a wasted run or a silently wrong one. Every
case runs ``glorac ...`` in-process, in a fresh working directory holding copies of its
inputs (relative paths, as a user types them), and checks:

* the exit code: 1 for a user error, 2 for a spec error (or argparse's own usage error),
  never 70 (glorac's "internal error");
* no traceback and no "internal error" on stderr, and a message that names the file,
  layer or flag at fault and says how to fix it;
* no wasted run: the model never ran a real forward pass before the refusal (and, where
  the mistake is visible without it, the model was not even built);
* the working directory (and the temporary directory glorac would use) is exactly as
  before, hidden files included: nothing new, nothing removed, every input unchanged
  byte for byte.

The model is the tiny ``tests.test_train:digit_net`` on ``builtin:digits`` at 8×8.
A property test at the end throws random values at every numeric training and search
flag: each value either runs or is refused cleanly, and a value outside a setting's
limits is always refused.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.modules.module import register_module_forward_pre_hook

import glorac
import glorac.models
from glorac.cli import main
from tests.reference import random_structure
from tests.test_train import SPEC

MODEL = "tests.test_train:digit_net"
IMAGE = ["--image-size", "8"]
DATA = ["--data", "builtin:digits", *IMAGE]
QUIET = ["--no-progress"]

#: Words a message uses when it says how to fix the mistake (one of them must appear).
FIX_WORDS = ("pass ", "use ", "choose", "remove", "rename", "lower", "raise", "leave out", "run ",
             "rerun", "add ", "check", "recreate", "without", "delete", "move", "give", "set ",
             "replace", "fix", "pick", "write ", "name a", "keep")


# ------------------------------------------------------------------------------ another model


class OtherNet(nn.Module):
    """A different model (other layer names), for a structure file that belongs elsewhere."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.head(self.encoder(x))


def other_net(num_classes: int = 10) -> nn.Module:
    return OtherNet(num_classes)


OTHER_SPEC = SPEC.replace('adapt "body.*"', 'adapt "encoder.*"')
TIGHT_SPEC = SPEC.replace("A: lora(r) | vector | scalar | none", "A: vector")  # smallest structure: 96


# ------------------------------------------------------------------------------ inputs (made once)


class Made(dict):
    """name → path of the inputs made once (a short repr for Hypothesis' reports)."""

    def __repr__(self) -> str:
        return "<made inputs>"


def _must(argv: list) -> None:
    code = main([str(a) for a in argv])
    assert code == 0, f"setting up: glorac {' '.join(map(str, argv))} exited {code}"


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """The files a user has at each stage: compiled, trained, searched, folded, ..."""
    d = tmp_path_factory.mktemp("made")
    (d / "digits.glora").write_text(SPEC)
    (d / "tight.glora").write_text(TIGHT_SPEC)
    (d / "other.glora").write_text(OTHER_SPEC)
    (d / "bad.glora").write_text(SPEC.replace("budget 3K", "budget 3K\nadapt \"body.*\" with nosuchspace"))
    f = Made({name: d / name for name in ("digits.glora", "tight.glora", "other.glora", "bad.glora")})
    f["sn.pt"], f["tight.pt"], f["other.pt"] = d / "sn.pt", d / "tight.pt", d / "other.pt"
    _must(["compile", f["digits.glora"], "--model", MODEL, "-o", f["sn.pt"]])
    _must(["compile", f["tight.glora"], "--model", MODEL, "-o", f["tight.pt"]])
    _must(["compile", f["other.glora"], "--model", "tests.test_cli_errors:other_net", "-o", f["other.pt"]])
    f["trained.pt"] = d / "trained.pt"
    _must(["train", f["sn.pt"], *DATA, "-o", f["trained.pt"], "--epochs", "1", "--warmup-epochs", "0", *QUIET])
    f["searched.pt"], f["structure.json"] = d / "searched.pt", d / "structure.json"
    _must(["search", f["trained.pt"], *DATA, "-o", f["searched.pt"], "--structure", f["structure.json"], *QUIET])
    f["folded.safetensors"] = d / "folded.safetensors"
    _must(["fold", f["searched.pt"], "-o", f["folded.safetensors"]])
    f["folded.glorac.json"] = d / "folded.glorac.json"
    assert f["folded.glorac.json"].is_file()
    f["other.json"] = d / "other.json"  # a real structure of the other model
    f["other.json"].write_text(random_structure(glorac.load(f["other.pt"]), seed=3).model_dump_json())
    # Class folders DIR/<class>/*.png: a train split only (no test split to evaluate on).
    from PIL import Image

    f["trainonly"] = d / "trainonly"
    for c in range(10):
        (f["trainonly"] / str(c)).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (25 * c, 10 * i, 0)).save(f["trainonly"] / str(c) / f"{i}.png")
    # Checkpoints that are not checkpoints.
    (d / "junk.pt").write_bytes(bytes(random_bytes(4096)))
    f["junk.pt"] = d / "junk.pt"
    torch.save({"a": 1}, d / "dict.pt")
    f["dict.pt"] = d / "dict.pt"
    return f


def random_bytes(n: int) -> bytes:
    g = torch.Generator().manual_seed(11)
    return bytes(torch.randint(0, 256, (n,), generator=g, dtype=torch.uint8).tolist())


# ------------------------------------------------------------------------------ the harness


@dataclass
class Result:
    code: int
    out: str
    err: str
    seconds: float


class Work:
    """A fresh working directory (the cwd), the spies, and the before/after snapshot."""

    def __init__(self, root: Path, made: dict[str, Path], monkeypatch):
        self.root, self.made = root, made
        self.dir = root / "work"
        self.systmp = root / "systmp"  # tempfile's directory during the test: temp files show up
        self.dir.mkdir()
        self.systmp.mkdir()
        monkeypatch.chdir(self.dir)
        monkeypatch.setattr(tempfile, "tempdir", str(self.systmp))
        self.built: list[str] = []
        self.forwards = 0
        real_resolve = glorac.models.resolve_model

        def resolve_spy(name, *args, **kwargs):
            self.built.append(str(name))
            return real_resolve(name, *args, **kwargs)

        monkeypatch.setattr(glorac.models, "resolve_model", resolve_spy)
        self._hook = register_module_forward_pre_hook(self._count)

    def _count(self, module, args) -> None:
        if is_real_forward(module, args):
            self.forwards += 1

    def close(self) -> None:
        self._hook.remove()

    def copy(self, name: str, as_name: str | None = None) -> str:
        """Copy a made input into the working directory; returns its relative name."""
        src, dst = self.made[name], self.dir / (as_name or name)
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy(src, dst)
        return dst.name

    def file(self, name: str, data: bytes = b"I am a regular file\n") -> str:
        (self.dir / name).write_bytes(data)
        return name

    def snapshot(self) -> dict[str, str]:
        """Every path under the root (hidden ones too) → content hash, or "<dir>"."""
        out = {}
        for path in sorted(self.root.rglob("*")):
            rel = str(path.relative_to(self.root))
            if path.is_symlink():
                out[rel] = "<link>" + os.readlink(path)
            elif path.is_dir():
                out[rel] = "<dir>"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        return out

    def run(self, capsys, *argv) -> Result:
        capsys.readouterr()
        start = time.perf_counter()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else 1
        seconds = time.perf_counter() - start
        out, err = capsys.readouterr()
        return Result(code, out, err, seconds)


@pytest.fixture
def work(tmp_path, made, monkeypatch):
    w = Work(tmp_path, made, monkeypatch)
    yield w
    w.close()


def is_real_forward(module: nn.Module, args: tuple) -> bool:
    """A forward pass of real data through the model (not a trace, not a meta-tensor check).

    Both test models start with an nn.Flatten, a leaf module that every pass through the
    model calls (directly or from its traced graph), once per batch.
    """
    x = args[0] if args else None
    return isinstance(module, nn.Flatten) and type(x) is torch.Tensor and x.device.type != "meta"


def test_the_harness_sees_real_work(work, capsys):
    """The checks above would pass vacuously if the forward counter missed real work."""
    sn = work.copy("sn.pt")
    r = work.run(capsys, "train", sn, *DATA, "-o", "t.pt", "--epochs", "1", "--warmup-epochs", "0",
                 "--batch-size", "512", *QUIET)
    assert r.code == 0, r.err
    assert work.forwards >= 3 and work.built  # 3 steps (of 3 passes each with sandwich sampling)
    work.forwards = 0
    r = work.run(capsys, "search", "t.pt", *DATA, "-o", "s.pt", *QUIET)
    assert r.code == 0, r.err
    assert work.forwards > 0


def _alternatives(item) -> tuple[str, ...]:
    return (item,) if isinstance(item, str) else tuple(item)


def first_line(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines[0] if lines else "<empty stderr>"


def refuse(work: Work, capsys, *argv, code: int = 1, names=(), fix=None, build: bool = True,
           within: float | None = None) -> Result:
    """Run ``glorac ARGV`` and check it is refused the way a user mistake must be.

    ``names``: fragments the message must contain (each a string or a tuple of
    alternatives); ``fix``: likewise, for the fix (default: any of FIX_WORDS);
    ``build=False``: the mistake is visible without the model, so it must not be built;
    ``within``: seconds the refusal may take at most.
    """
    before = work.snapshot()
    work.built.clear()
    work.forwards = 0
    r = work.run(capsys, *argv)
    after = work.snapshot()
    err, low = r.err, r.err.lower()
    problems = []
    if r.code != code:
        problems.append(f"exit code {r.code}, expected {code}")
    if "Traceback" in err:
        problems.append("a traceback on stderr")
    if "internal error" in low:
        problems.append("an internal error")
    if not err.strip():
        problems.append("no message on stderr")
    for item in names:
        alts = _alternatives(item)
        if not any(a.lower() in low for a in alts):
            problems.append(f"the message does not name {' / '.join(map(repr, alts))}")
    fixes = _alternatives(fix) if fix is not None else FIX_WORDS
    if not any(a.lower() in low for a in fixes):
        problems.append(f"the message does not say how to fix it (none of {fixes!r})")
    if work.forwards:
        problems.append(f"a wasted run: the model ran {work.forwards} forward pass(es) before the refusal")
    if not build and work.built:
        problems.append(f"work before the check: the model was built ({', '.join(work.built)})")
    if within is not None and r.seconds > within:
        problems.append(f"took {r.seconds:.2f} s (more than {within} s)")
    new = sorted(set(after) - set(before))
    gone = sorted(set(before) - set(after))
    changed = sorted(k for k in before if k in after and before[k] != after[k])
    if new:
        problems.append(f"left behind: {new}")
    if gone:
        problems.append(f"removed: {gone}")
    if changed:
        problems.append(f"changed inputs: {changed}")
    assert not problems, (f"glorac {' '.join(map(str, argv))}\n  - " + "\n  - ".join(problems)
                          + f"\n  exit {r.code}; stderr first line: {first_line(err)}\n  stderr:\n{err}")
    return r


# ------------------------------------------------------------------------------ glorac train

TRAIN_FLAG_CASES = [
    (["--batch-size", "0"], ["--batch-size", "0"]),
    (["--lr", "-1"], ["--lr", "-1"]),
    (["--lr", "nan"], ["--lr", "nan"]),
    (["--lr", "inf"], ["--lr", "inf"]),
    (["--grad-clip", "-1"], ["--grad-clip", "-1"]),
    (["--epochs", "0"], ["--epochs", "0"]),
    (["--warmup-epochs", "5", "--epochs", "2"], ["--warmup-epochs", "--epochs"]),
    (["--weight-decay", "-0.1"], ["--weight-decay", "-0.1"]),
    (["--seed", "-1"], ["--seed", "-1"]),
    (["--min-lr", "-0.001"], ["--min-lr"]),
    (["--head-lr", "0"], ["--head-lr"]),
]


@pytest.mark.parametrize("flags, names", TRAIN_FLAG_CASES, ids=[" ".join(c[0]) for c in TRAIN_FLAG_CASES])
def test_train_bad_setting_flag(work, capsys, flags, names):
    sn = work.copy("sn.pt")
    refuse(work, capsys, "train", sn, *DATA, "-o", "out.pt", *flags, *QUIET, names=names)


@pytest.mark.parametrize("flags, names", [
    (["--schedule", "weird"], ["--schedule", "weird", "cosine"]),
    (["--epochs", "two"], ["--epochs", "two"]),
    (["--lr", "1e-3x"], ["--lr", "1e-3x"]),
    (["--lr", "-1e-3"], ["--lr"]),  # argparse takes -1e-3 for an option
], ids=["--schedule weird", "--epochs two", "--lr 1e-3x", "--lr -1e-3"])
def test_train_flag_argparse_refuses(work, capsys, flags, names):
    sn = work.copy("sn.pt")
    refuse(work, capsys, "train", sn, *DATA, "-o", "out.pt", *flags, *QUIET, code=2, names=names,
           fix=("usage:",), build=False)


def test_train_output_under_a_regular_file(work, capsys):
    sn = work.copy("sn.pt")
    work.file("afile")
    refuse(work, capsys, "train", sn, *DATA, "-o", "afile/t.pt", *QUIET, names=["afile"], build=False)


def test_train_output_in_a_read_only_directory(work, capsys):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    sn = work.copy("sn.pt")
    ro = work.dir / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        refuse(work, capsys, "train", sn, *DATA, "-o", "ro/t.pt", *QUIET, names=["ro"], build=False)
    finally:
        ro.chmod(0o700)


def test_train_existing_output_without_force(work, capsys):
    sn = work.copy("sn.pt")
    work.file("run.pt", b"precious")
    refuse(work, capsys, "train", sn, *DATA, "-o", "run.pt", *QUIET, names=["run.pt"], fix=["--force"],
           build=False)


def test_train_output_is_the_input_without_force(work, capsys):
    sn = work.copy("sn.pt")
    refuse(work, capsys, "train", sn, *DATA, "-o", sn, *QUIET, names=[sn], build=False)


def test_train_default_output_exists(work, capsys):
    sn = work.copy("sn.pt")
    work.file("sn.trained.pt", b"an earlier run")
    refuse(work, capsys, "train", sn, *DATA, *QUIET, names=["sn.trained.pt"], fix=["--force"], build=False)


def test_train_resume_without_an_output(work, capsys):
    sn = work.copy("sn.pt")
    refuse(work, capsys, "train", sn, *DATA, "-o", "run.pt", "--resume", *QUIET, names=["run.pt", "--resume"],
           build=False)


@pytest.mark.parametrize("command", ["train", "search", "finetune"])
def test_wrong_data_path_is_reported_fast(work, capsys, command):
    ckpt = work.copy({"train": "sn.pt", "search": "trained.pt", "finetune": "searched.pt"}[command])
    refuse(work, capsys, command, ckpt, "--data", "digits_data", *IMAGE, "-o", "out.pt", *QUIET,
           names=["digits_data"], build=False, within=3.0)


def test_train_builtin_name_without_prefix(work, capsys):
    sn = work.copy("sn.pt")
    refuse(work, capsys, "train", sn, "--data", "digits", *IMAGE, "-o", "out.pt", *QUIET,
           names=["builtin:digits"], build=False, within=3.0)


# ------------------------------------------------------------------------------ not a checkpoint

NOT_CHECKPOINTS = {
    "random bytes": ("junk.pt", "junk.pt"),
    "torch.save({'a': 1})": ("dict.pt", "dict.pt"),
    "a directory": (None, "adir"),
    "a missing file": (None, "nope.pt"),
}


def _not_a_checkpoint(work: Work, kind: str) -> str:
    made_name, name = NOT_CHECKPOINTS[kind]
    if made_name:
        return work.copy(made_name)
    if kind == "a directory":
        (work.dir / name).mkdir()
    return name


@pytest.mark.parametrize("kind", list(NOT_CHECKPOINTS))
@pytest.mark.parametrize("command", ["train", "search", "finetune", "fold", "eval"])
def test_not_a_checkpoint(work, capsys, command, kind):
    bad = _not_a_checkpoint(work, kind)
    argv = {
        "train": ["train", bad, *DATA, "-o", "out.pt", *QUIET],
        "search": ["search", bad, *DATA, "-o", "out.pt", *QUIET],
        "finetune": ["finetune", bad, *DATA, "-o", "out.pt", *QUIET],
        "fold": ["fold", bad, "-o", "out.safetensors"],
        "eval": ["eval", bad, *DATA],
    }[command]
    refuse(work, capsys, *argv, names=[bad], build=False)


# ------------------------------------------------------------------------------ glorac search

SEARCH_FLAG_CASES = [
    (["--parents", "0"], ["--parents", "0"]),
    (["--population", "1"], ["--population", "1"]),
    (["--mutation-prob", "2"], ["--mutation-prob", "2"]),
    (["--parents", "20", "--population", "8"], ["--parents", "--population"]),
    (["--generations", "0"], ["--generations", "0"]),
    (["--batch-size", "0"], ["--batch-size", "0"]),
    (["--batch-size=-1"], ["--batch-size", "-1"]),
    (["--budget", "0"], ["--budget", "0"]),
    (["--budget", "12X"], ["--budget", "12X"]),
    (["--budget=-3K"], ["--budget", "-3K"]),
]


@pytest.mark.parametrize("flags, names", SEARCH_FLAG_CASES, ids=[" ".join(c[0]) for c in SEARCH_FLAG_CASES])
def test_search_bad_flag(work, capsys, flags, names):
    ckpt = work.copy("trained.pt")
    refuse(work, capsys, "search", ckpt, *DATA, "-o", "s.pt", *flags, *QUIET, names=names)


def test_search_budget_below_the_smallest_structure(work, capsys):
    ckpt = work.copy("tight.pt")
    refuse(work, capsys, "search", ckpt, *DATA, "-o", "s.pt", "--budget", "10", *QUIET,
           names=[("--budget", "budget 10"), "96"])


@pytest.mark.parametrize("outputs", [
    ["-o", "afile/s.pt"],
    ["-o", "s.pt", "--structure", "afile/s.json"],
    ["-o", "s.pt", "--plot", "afile/p.png"],
], ids=["-o", "--structure", "--plot"])
def test_search_output_under_a_regular_file(work, capsys, outputs):
    ckpt = work.copy("trained.pt")
    work.file("afile")
    refuse(work, capsys, "search", ckpt, *DATA, *outputs, *QUIET, names=["afile"], build=False)


@pytest.mark.parametrize("which", ["-o", "--structure", "--plot"])
def test_search_existing_output_without_force(work, capsys, which):
    ckpt = work.copy("trained.pt")
    existing = {"-o": "s.pt", "--structure": "s.json", "--plot": "s.png"}[which]
    work.file(existing, b"precious")
    refuse(work, capsys, "search", ckpt, *DATA, "-o", "s.pt", "--structure", "s.json", "--plot", "s.png", *QUIET,
           names=[existing], fix=["--force"], build=False)


# ------------------------------------------------------------------------------ glorac fold


def test_fold_malformed_structure_file(work, capsys):
    ckpt = work.copy("trained.pt")
    work.file("s.json", b'{"layers": {"body.1": {"A": ')
    refuse(work, capsys, "fold", ckpt, "--structure", "s.json", "-o", "m.safetensors", names=["s.json"])


def test_fold_structure_names_an_unknown_layer(work, capsys):
    ckpt = work.copy("trained.pt")
    text = work.made["structure.json"].read_text().replace('"body.4"', '"body.5"')
    work.file("s.json", text.encode())
    refuse(work, capsys, "fold", ckpt, "--structure", "s.json", "-o", "m.safetensors",
           names=["s.json", "body.5"])


def test_fold_structure_kind_outside_the_space(work, capsys):
    """The message names the layer, the tensor, the kind given and the kinds allowed."""
    ckpt = work.copy("trained.pt")
    text = work.made["structure.json"].read_text()
    import json

    data = json.loads(text)
    data["layers"]["body.4"]["A"] = {"kind": "lora", "rank": 8}  # the space has lora(2)
    work.file("s.json", json.dumps(data).encode())
    refuse(work, capsys, "fold", ckpt, "--structure", "s.json", "-o", "m.safetensors",
           names=["s.json", "body.4", "A", "lora(8)", "lora(2)", "vector", "scalar", "none"])


@pytest.mark.parametrize("force", [False, True], ids=["", "--force"])
def test_fold_output_is_the_input(work, capsys, force):
    ckpt = work.copy("searched.pt")
    refuse(work, capsys, "fold", ckpt, "-o", ckpt, *(["--force"] if force else []),
           names=[ckpt, ("itself", "the input", "same file")], build=False)


def test_fold_output_under_a_regular_file(work, capsys):
    ckpt = work.copy("searched.pt")
    work.file("afile")
    refuse(work, capsys, "fold", ckpt, "-o", "afile/m.safetensors", names=["afile"], build=False)


# ------------------------------------------------------------------------------ glorac finetune


def test_finetune_without_a_selected_structure(work, capsys):
    ckpt = work.copy("trained.pt")
    refuse(work, capsys, "finetune", ckpt, *DATA, "-o", "tuned.pt", *QUIET,
           names=[ckpt, "glorac search", "--structure"])


def test_finetune_structure_of_another_model(work, capsys):
    ckpt = work.copy("searched.pt")
    other = work.copy("other.json")
    refuse(work, capsys, "finetune", ckpt, *DATA, "-o", "tuned.pt", "--structure", other, *QUIET,
           names=[other, ("encoder.1", "encoder.3", "body.1", "body.4")])


def test_finetune_lr_zero(work, capsys):
    ckpt = work.copy("searched.pt")
    refuse(work, capsys, "finetune", ckpt, *DATA, "-o", "tuned.pt", "--lr", "0", *QUIET, names=["--lr", "0"])


# ------------------------------------------------------------------------------ glorac eval


def test_eval_missing_split(work, capsys):
    ckpt = work.copy("searched.pt")
    data = work.copy("trainonly")
    refuse(work, capsys, "eval", ckpt, "--data", data, *IMAGE, names=[data, "test"])


def test_eval_unknown_split_name(work, capsys):
    ckpt = work.copy("searched.pt")
    refuse(work, capsys, "eval", ckpt, *DATA, "--split", "tset", names=["tset", "test"])


def test_eval_folded_file_without_its_sidecar(work, capsys):
    folded = work.copy("folded.safetensors")
    refuse(work, capsys, "eval", folded, *DATA, names=[folded, "folded.glorac.json"], fix=["glorac fold"])


@pytest.mark.parametrize("size", ["0", "-1"])
def test_eval_batch_size_not_positive(work, capsys, size):
    ckpt = work.copy("searched.pt")
    refuse(work, capsys, "eval", ckpt, *DATA, f"--batch-size={size}", names=["--batch-size"])


# ------------------------------------------------------------------------------ glorac compile


def test_compile_invalid_spec_is_a_spec_error(work, capsys):
    spec = work.copy("bad.glora")
    r = refuse(work, capsys, "compile", spec, "--model", MODEL, "-o", "sn.pt", code=2,
               names=[spec, "nosuchspace"], fix=["hint:"], build=False)
    assert re.search(r"bad\.glora:\d+:\d+", r.err), r.err


def test_compile_output_under_a_regular_file(work, capsys):
    spec = work.copy("digits.glora")
    work.file("afile")
    refuse(work, capsys, "compile", spec, "--model", MODEL, "-o", "afile/sn.pt", names=["afile"], build=False)


# ------------------------------------------------------------------------------ property test
#
# Each draw: one numeric flag and a value (negative, zero, huge, nan, inf, non-numeric, ...),
# passed as --flag=VALUE to a tiny run. The run stops (as Ctrl-C would) after MAX_FORWARDS
# forward passes, so that a huge but valid value (--epochs=10**9) costs no more than a
# small one; a watchdog reports a value that hangs before doing any work.

INT, FLOAT = "int", "float"
# flag → (type, lowest allowed, lowest is exclusive, highest allowed or None)
TRAIN_LIMITS = {
    "--epochs": (INT, 1, False, None), "--lr": (FLOAT, 0.0, True, None),
    "--weight-decay": (FLOAT, 0.0, False, None), "--batch-size": (INT, 1, False, None),
    "--warmup-epochs": (INT, 0, False, None), "--min-lr": (FLOAT, 0.0, False, None),
    "--grad-clip": (FLOAT, 0.0, True, None), "--head-lr": (FLOAT, 0.0, True, None),
    "--seed": (INT, 0, False, None),
}
SEARCH_LIMITS = {
    "--population": (INT, 2, False, None), "--generations": (INT, 1, False, None),
    "--parents": (INT, 1, False, None), "--mutations": (INT, 0, False, None),
    "--crossovers": (INT, 0, False, None), "--mutation-prob": (FLOAT, 0.0, False, 1.0),
    "--seed": (INT, 0, False, None), "--batch-size": (INT, 1, False, None),
}
TRAIN_BASE = {"--epochs": "1", "--warmup-epochs": "0", "--batch-size": "512"}
SEARCH_BASE = {"--population": "4", "--generations": "1", "--parents": "2", "--mutations": "2",
               "--crossovers": "2"}
MAX_FORWARDS = 60
WATCHDOG_S = 8.0

VALUES = st.one_of(
    st.integers(min_value=-10, max_value=10).map(str),
    st.integers(min_value=-(10 ** 30), max_value=10 ** 30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=-2.0, max_value=2.0).map(repr),
    st.sampled_from(["0", "-0", "0.0", "1e400", "-1e400", "nan", "inf", "-inf", "NaN", "1e-320", "",
                     "abc", "1,5", "0x10", "1_000", " 3", "3K", "1e3", "2.5", "10**9", "999999999999"]),
)


def _number(text: str, kind: str):
    """What argparse's type=int / type=float makes of the text, or None if it refuses it."""
    try:
        return int(text) if kind == INT else float(text)
    except ValueError:
        return None


def _allowed(flag: str, value, limits: dict, base: dict) -> bool:
    kind, low, exclusive, high = limits[flag]
    if kind == FLOAT and not math.isfinite(value):
        return False
    if value < low or (exclusive and value == low) or (high is not None and value > high):
        return False
    merged = {k: int(v) for k, v in base.items()}
    merged[flag] = value
    if flag in ("--epochs", "--warmup-epochs") and "--epochs" in merged:
        return merged["--warmup-epochs"] < merged["--epochs"]
    if flag in ("--population", "--parents") and "--population" in merged:
        return merged["--parents"] <= merged["--population"]
    return True


class _Stopped(BaseException):
    """The watchdog's alarm (a BaseException, so that glorac's own handlers let it through)."""


def _property_run(capsys, argv_head: list, flag: str, text: str, limits: dict, base: dict,
                  root: Path) -> None:
    flags = dict(base)
    flags[flag] = text
    argv = [str(a) for a in (*argv_head, *(f"{k}={v}" for k, v in flags.items()))]
    number = _number(text, limits[flag][0])
    allowed = number is not None and _allowed(flag, number, limits, base)
    forwards = {"n": 0, "stopped": False}

    def bounded(module, args):
        if is_real_forward(module, args):
            forwards["n"] += 1
            if forwards["n"] > MAX_FORWARDS:
                forwards["stopped"] = True
                raise KeyboardInterrupt  # a Ctrl-C: enough of this run

    source = Path(argv[1])
    source_hash = hashlib.sha256(source.read_bytes()).hexdigest()
    hook = register_module_forward_pre_hook(bounded)
    before = sorted(p.name for p in root.iterdir())
    def watchdog(signum, frame):
        raise _Stopped(f"no result after {WATCHDOG_S} s")

    previous = signal.signal(signal.SIGALRM, watchdog)
    signal.setitimer(signal.ITIMER_REAL, WATCHDOG_S)
    capsys.readouterr()
    start = time.perf_counter()
    hung = None
    try:
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    except _Stopped as exc:
        code, hung = None, str(exc)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        hook.remove()
    seconds = time.perf_counter() - start
    _, err = capsys.readouterr()
    shown = f"glorac {' '.join(argv)} (allowed: {allowed}) → exit {code}, {seconds:.1f} s; stderr: {err.strip()[:600]}"
    assert hung is None, f"{shown}\n  hung: {hung}, after {forwards['n']} forward passes"
    assert hashlib.sha256(source.read_bytes()).hexdigest() == source_hash, f"{shown}\n  changed {source}"
    assert code != 70 and "internal error" not in err and "Traceback" not in err, shown
    if code == 130:
        assert forwards["stopped"], f"{shown}\n  interrupted, but not by the test"
        return
    if not allowed:
        assert code in (1, 2), f"{shown}\n  a value outside the limits was not refused"
        assert flag in err, f"{shown}\n  the message does not name {flag}"
        assert forwards["n"] == 0, f"{shown}\n  refused only after {forwards['n']} forward passes"
        assert sorted(p.name for p in root.iterdir()) == before, f"{shown}\n  left files behind"
    assert code in (0, 1, 2), shown
    if code != 0:
        assert err.strip() and "\n\n" not in err.strip(), f"{shown}\n  not a one-paragraph message"


PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate],  # no shrinking: a hang costs WATCHDOG_S a try
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@PROPERTY
@given(flag=st.sampled_from(sorted(TRAIN_LIMITS)), text=VALUES)
def test_property_train_numeric_flags(made, capsys, flag, text):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        _property_run(capsys, ["train", made["sn.pt"], *DATA, "-o", root / "out.pt", "--force", *QUIET],
                      flag, text, TRAIN_LIMITS, TRAIN_BASE, root)


@PROPERTY
@given(flag=st.sampled_from(sorted(SEARCH_LIMITS)), text=VALUES)
def test_property_search_numeric_flags(made, capsys, flag, text):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        _property_run(capsys, ["search", made["trained.pt"], *DATA, "-o", root / "s.pt", "--force",
                                            *QUIET], flag, text, SEARCH_LIMITS, SEARCH_BASE, root)


BIG = str(10 ** 12)
EDGE_CASES = [
    ("train", "--lr", "1e300"), ("train", "--lr", "3.4e38"), ("train", "--lr", "1e-320"),
    ("train", "--min-lr", "1e300"), ("train", "--head-lr", "1e300"), ("train", "--grad-clip", "1e300"),
    ("train", "--weight-decay", "1e300"), ("train", "--seed", str(2 ** 64)), ("train", "--seed", str(10 ** 30)),
    ("train", "--epochs", BIG), ("train", "--batch-size", BIG), ("train", "--warmup-epochs", BIG),
    ("search", "--batch-size", "-1"), ("search", "--batch-size", "0"), ("search", "--batch-size", BIG),
    ("search", "--mutations", BIG), ("search", "--crossovers", BIG), ("search", "--population", BIG),
    ("search", "--generations", BIG), ("search", "--parents", BIG), ("search", "--seed", str(2 ** 64)),
    ("search", "--mutation-prob", "nan"), ("search", "--mutation-prob", "1e-320"),
]


@pytest.mark.parametrize("command, flag, text", EDGE_CASES, ids=[f"{c} {f}={v}" for c, f, v in EDGE_CASES])
def test_flag_edge_values(made, capsys, command, flag, text):
    """The property test's rule on chosen edge values (Hypothesis stops at its first failure)."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        if command == "train":
            _property_run(capsys, ["train", made["sn.pt"], *DATA, "-o", root / "out.pt", "--force", *QUIET],
                          flag, text, TRAIN_LIMITS, TRAIN_BASE, root)
        else:
            _property_run(capsys, ["search", made["trained.pt"], *DATA, "-o", root / "s.pt", "--force", *QUIET],
                          flag, text, SEARCH_LIMITS, SEARCH_BASE, root)


#: --budget=TEXT → the budget it must run with, None (must be refused, naming --budget), or
#: ("either", N): run with budget N or be refused (a spelling one may reasonably reject).
BUDGETS = {
    "0": None, "-1": None, "12X": None, "nan": None, "inf": None, "": None, " ": None, "∞": None,
    "1.5": None, "1e20": None, "0.5K": 500, "3K": 3000, "3000": 3000, "1": 1, "10G": 10 ** 10,
    "0.0001M": 100, "1e3": ("either", 1000), "3k": ("either", 3000), "3 K": ("either", 3000),
    "1,000": ("either", 1000),
}


@pytest.mark.parametrize("budget", list(BUDGETS))
def test_search_budget_values(made, capsys, tmp_path, budget):
    """Every --budget runs with the budget it says, or is refused with a message naming --budget."""
    want = BUDGETS[budget]
    out = tmp_path / "s.pt"
    argv = ["search", made["trained.pt"], *DATA, "-o", out, "--force", *QUIET,
            *(f"{k}={v}" for k, v in SEARCH_BASE.items()), f"--budget={budget}"]
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    err = capsys.readouterr().err
    shown = f"glorac search ... --budget={budget!r} (want: {want}) → exit {code}; stderr: {err.strip()[:600]}"
    assert code != 70 and "internal error" not in err and "Traceback" not in err, shown
    either = isinstance(want, tuple)
    value = want[1] if either else want
    if code == 0:
        assert value is not None, f"{shown}\n  a budget that is no parameter count was taken"
        assert glorac.load(out).history.search.budget == value, f"{shown}\n  read as another budget"
    else:
        assert value is None or either, shown
        assert code == 1 and "--budget" in err, shown
        assert "\n\n" not in err.strip(), shown
        assert not out.exists(), shown
