"""Human-readable tables (rich) for plans and structures."""

from __future__ import annotations

import re
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from .ir import Kind, Space

_SHORT = {"vector": "v", "scalar": "s", "none": "–"}
LEGEND = "kinds: l<r> = lora(r), v = vector, s = scalar, – = none"


def short_kind(kind: Kind) -> str:
    return f"l{kind.rank}" if kind.kind == "lora" else _SHORT[kind.kind]


def short_space(space: Space) -> str:
    return " ".join(f"{t}:{'|'.join(short_kind(k) for k in ks)}" for t, ks in space.items())


def make_console() -> Console:
    console = Console()
    # Tables are read in terminals and in CI logs alike; a pipe gets a wide, unwrapped table.
    return console if console.is_terminal else Console(width=200)


def print_plan(plan, title: str = "", console: Console | None = None, base: "BaseSize | None" = None) -> None:
    """The plan as a compact table: layers that differ only by their block number share a
    row (``blocks.*.attn.qkv ×12``); a note every layer has is said once below."""
    console = console or make_console()
    table = Table(title=title or None, show_lines=False, caption=LEGEND)
    for col in ("layers", "type", "shape", "allowed kinds", "max params", "rule", "notes"):
        table.add_column(col, overflow="fold", justify="right" if col == "max params" else "left")
    common = set.intersection(*(set(lp.notes) for lp in plan.layers)) if plan.layers else set()
    for (pattern, kind, shape, space, rule, notes), group in _layer_groups(plan, common).items():
        name = pattern if len(group) == 1 else f"{pattern} ×{len(group)}"
        table.add_row(name, kind, shape, space, f"{sum(lp.max_params for lp in group):,}", rule, notes)
    console.print(table)
    if common:
        console.print(f"every layer: {'; '.join(sorted(common))}")
    front = "torch.fx graph" if plan.front_end == "fx" else "module swap"
    console.print(f"front end: {front}" + (f" (tracing failed {plan.trace_failure})"
                                             if plan.trace_failure else ""))
    reasons: dict[str, list[str]] = {}
    for name, why in plan.skipped:
        reasons.setdefault(why, []).append(name)
    for why, names in reasons.items():
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        console.print(f"skipped {shown}: {why}")
    console.print(f"layers adapted: {len(plan.layers)}")
    console.print(f"trained modules: {', '.join(plan.trained) or 'none'} ({plan.trained_params:,} params)")
    console.print(f"supernet trainable params: {plan.supernet_params:,}")
    console.print(f"smallest subnet: {plan.min_params:,}   largest subnet: {plan.max_params:,} "
                  "adapter params")
    console.print(f"structures: 10^{plan.log10_structures:.1f}")
    if plan.budget is None:
        console.print("budget: none set")
    else:
        feasible = "feasible" if plan.budget_feasible else "INFEASIBLE (below the smallest subnet)"
        counted = " incl. trained" if plan.budget.include_trained else ""
        console.print(f"budget: {plan.budget.params:,}{counted} → {feasible}")
    if base is not None:
        for line in base.describe(plan):
            console.print(line)


def _layer_groups(plan, common: set) -> dict[tuple, list]:
    groups: dict[tuple, list] = {}
    for lp in plan.layers:
        site = lp.site
        kind = site.type + (" (functional)" if site.functional else "") + (" (Conv1D)" if site.transposed else "")
        key = (re.sub(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.)", "*", lp.qualname), kind, site.shape,
               short_space(lp.space), f"{lp.rule.file}:{lp.rule.line}",
               "; ".join(n for n in lp.notes if n not in common))
        groups.setdefault(key, []).append(lp)
    return groups


@dataclass(frozen=True)
class BaseSize:
    """The base model's size, for the memory estimate `glorac plan` prints."""

    params: int
    bytes: int  # as stored (its dtype)

    @classmethod
    def of(cls, model) -> "BaseSize":
        tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}.values()
        return cls(sum(t.numel() for t in tensors), sum(t.numel() * t.element_size() for t in tensors))

    def describe(self, plan, world: int = 8) -> list[str]:
        """Sizes, the trainable share, and training memory per GPU before activations:
        base weights, plus fp32 trainable tensors with their gradients and AdamW's two moments.
        Under FSDP (glorac.sharding) only the base is sharded; the trainable state is whole
        on every GPU, and one block at a time is gathered in the forward (not counted)."""
        trainable = plan.supernet_params
        state = trainable * 4 * 4
        ddp = self.bytes + state
        fsdp = self.bytes / world + state
        return [f"base model: {self.params:,} params ({_gib(self.bytes)} as stored); trainable: {trainable:,} "
                f"({100 * trainable / max(self.params, 1):.3f}% of the base)",
                f"training memory per GPU, before activations: DDP {_gib(ddp)}; FSDP over {world} GPUs "
                f"{_gib(fsdp)} (base weights, fp32 trainable tensors, their gradients and AdamW state; "
                f"FSDP shards the base only)"]


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"


def print_fold_report(report, console: Console | None = None, max_rows: int = 60) -> None:
    console = console or make_console()
    table = Table(title="fold report", caption=f"dtype {report.dtype}, tolerance {report.tolerance:g}")
    for col in ("layer", "structure", "params folded", "max |Δ| (layer probe)"):
        table.add_column(col, justify="right" if col != "layer" and col != "structure" else "left")
    for lf in report.layers[:max_rows]:
        table.add_row(lf.layer, lf.structure, f"{lf.params:,}", f"{lf.max_abs_delta:.2e}")
    if len(report.layers) > max_rows:
        table.add_row(f"... {len(report.layers) - max_rows} more", "", "", "")
    console.print(table)
    total = sum(lf.params for lf in report.layers)
    console.print(f"adapter parameters folded: {total:,} across {len(report.layers)} layers")
    if report.rel_error is not None:
        console.print(f"end to end: max |Δ| = {report.max_abs_error:.3e}, max|Δ|/max|y| = "
                      f"{report.rel_error:.3e} (tolerance {report.tolerance:g}) → "
                      f"{'ok' if report.ok else 'FAILED'}")
    elif report.note:
        console.print(report.note)


def print_search(result, console: Console | None = None, rows: int = 10, task: str = "classification") -> None:
    from .objectives import fitness_label

    console = console or make_console()
    budget = f"{result.budget:,}" if result.budget is not None else "none"
    table = Table(title=f"best structures (budget {budget}, {len(result.evaluated)} evaluated)")
    for col in ("rank", fitness_label(task), "adapter params", "generation", "kinds used (A..E over layers)"):
        table.add_column(col)
    for i, c in enumerate(result.top[:rows], start=1):
        table.add_row(str(i), f"{c.fitness:.4f}", f"{c.params:,}", str(c.generation), kind_summary(c.structure))
    console.print(table)


def kind_summary(structure) -> str:
    """e.g. `A: l8×10 v×2 –×12` per tensor: how often each kind was chosen."""
    parts = []
    for t in "ABCDE":
        counts: dict[str, int] = {}
        for choice in structure.layers.values():
            k = short_kind(choice.tensor(t))
            counts[k] = counts.get(k, 0) + 1
        parts.append(f"{t}:" + ",".join(f"{k}×{n}" for k, n in sorted(counts.items())))
    return " ".join(parts)


def print_demo(rows: list[dict], console: Console | None = None) -> None:
    console = console or make_console()
    table = Table(title="glorac demo: EfficientNet-Lite0 (ImageNet) → MNIST-5k")
    for col in ("method", "test top-1", "adapter params", "trainable params", "time"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        acc = f"{r['test_accuracy']:.4f}" if "test_accuracy" in r else ""
        table.add_row(r["method"], acc, f"{r['adapter_params']:,}" if "adapter_params" in r else "",
                      f"{r['trainable_params']:,}" if "trainable_params" in r else "", f"{r['seconds']:.0f} s")
    console.print(table)
    errors = [r["fold_rel_error"] for r in rows if r.get("fold_rel_error") is not None]
    if errors:
        console.print(f"every adapted row is the folded stock model; worst fold error max|Δ|/max|y| = "
                      f"{max(errors):.2e}")
