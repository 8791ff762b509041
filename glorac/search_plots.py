"""A picture of a search: accuracy vs parameters, and the chosen structure per layer.

matplotlib is imported inside :func:`plot_search` and drives a standalone ``Figure``
with the Agg canvas, so importing this module is cheap and plotting never touches
pyplot's global state or the user's chosen backend.
"""

from __future__ import annotations

import os
import uuid
from typing import Iterable, Sequence

from .ir import TENSORS, Kind
from .evolution import Candidate, SearchResult

#: Layer labels longer than this are abbreviated (inner path components shortened).
MAX_LABEL = 28
_BASE_COLORS = {"none": "#eeeeee", "scalar": "#a6cee3", "vector": "#1f78b4"}
_NONE_KIND = Kind(kind="none")


def pareto_front(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Candidates no other beats with as few parameters: fitness strictly rising with params.

    Sorted by params ascending; among equal (params, fitness) the first given wins.
    """
    ordered = sorted(enumerate(candidates), key=lambda ic: (ic[1].params, -ic[1].fitness, ic[0]))
    front: list[Candidate] = []
    for _, cand in ordered:
        if not front or cand.fitness > front[-1].fitness:
            front.append(cand)
    return front


def human(n: float) -> str:
    """12_345 → '12.3K', 860_000 → '860K', 1_200_000 → '1.2M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def abbreviate_layers(names: Sequence[str], max_len: int = MAX_LABEL) -> tuple[list[str], str]:
    """Short, still distinct labels: drop the dotted prefix all names share, then shorten.

    Returns (labels, dropped prefix). Inner non-numeric components of a long label are
    cut to 4 characters (the index and the last component say most); still too long, it
    keeps its tail after an ellipsis.
    """
    parts = [n.split(".") for n in names]
    common = 0
    while len(parts) > 1 and all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    prefix = ".".join(parts[0][:common]) + "." if common else ""
    labels = []
    for p in parts:
        rest = p[common:]
        label = ".".join(rest)
        if len(label) > max_len:
            label = ".".join([c if c.isdigit() else c[:4] for c in rest[:-1]] + rest[-1:])
        if len(label) > max_len:
            label = "…" + label[-(max_len - 1):]
        labels.append(label)
    if len(set(labels)) < len(labels):  # abbreviation collided: full names are the honest fallback
        labels = [".".join(p[common:]) for p in parts]
    return labels, prefix


def _kind_palette(kinds: Iterable[Kind]) -> dict[Kind, str]:
    """none/scalar/vector fixed; one orange per lora rank, darker for higher ranks."""
    from matplotlib import colormaps

    ranks = sorted({k.rank for k in kinds if k.kind == "lora"})
    palette = {Kind(kind=name): color for name, color in _BASE_COLORS.items()}
    oranges = colormaps["Oranges"]
    for i, r in enumerate(ranks):
        palette[Kind(kind="lora", rank=r)] = oranges(0.45 + 0.45 * (i / max(1, len(ranks) - 1)))
    return palette


def _cell_text(kind: Kind) -> str:
    return {"none": "", "scalar": "s", "vector": "v"}.get(kind.kind, f"r{kind.rank}")


def _plot_front(ax, result: SearchResult, label: str) -> None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    cands = result.evaluated
    xs = [c.params for c in cands]
    gens = max(c.generation for c in cands)
    sc = ax.scatter(xs, [c.fitness for c in cands], c=[c.generation for c in cands], cmap="viridis",
                    vmin=0, vmax=max(1, gens), s=18, alpha=0.75, edgecolors="none")
    cbar = ax.figure.colorbar(sc, ax=ax)
    cbar.set_label("generation")
    cbar.locator = MaxNLocator(integer=True)
    cbar.update_ticks()
    front = pareto_front(cands)
    fx, fy = [c.params for c in front], [c.fitness for c in front]
    ax.step(fx + [max(xs)], fy + [fy[-1]], where="post", color="#d62728", lw=1.4, label="Pareto front")
    if result.budget is not None:
        ax.axvline(result.budget, color="grey", ls="--", lw=1, label=f"budget {human(result.budget)}")
    best = result.best
    ax.scatter([best.params], [best.fitness], marker="*", s=260, color="#d62728", edgecolors="black",
               zorder=5, label="chosen")
    ax.annotate(f"chosen: {best.fitness:.4g}\n{human(best.params)} params, gen {best.generation}",
                xy=(best.params, best.fitness), xytext=(-12, -28), textcoords="offset points",
                ha="right", va="top", fontsize=9, arrowprops={"arrowstyle": "->", "lw": 0.8},
                bbox={"boxstyle": "round", "fc": "white", "ec": "grey", "alpha": 0.9}, zorder=6)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: human(v)))
    ax.set_xlabel("adapter parameters")
    ax.set_ylabel(f"fitness ({label})")
    ax.set_title(f"{len(cands)} structures evaluated, {gens} generation(s)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)


def _plot_top(ax, result: SearchResult) -> None:
    ax.axis("off")
    budget = "none" if result.budget is None else f"{result.budget:,}"
    lines = [f"budget {budget}   smallest structure {result.min_params:,}   seed {result.settings.seed}",
             "", f"{'#':>3} {'fitness':>9} {'params':>12} {'gen':>4}"]
    lines += [f"{i:>3} {c.fitness:>9.4g} {c.params:>12,} {c.generation:>4}" for i, c in enumerate(result.top, 1)]
    ax.text(0.0, 1.0, "\n".join(lines), family="monospace", fontsize=9, va="top", transform=ax.transAxes)


def _plot_structure(ax, result: SearchResult) -> None:
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    layers = result.best.structure.layers
    names = list(layers)
    grid_kinds = [[layers[n].tensor(t) for t in TENSORS] for n in names]
    palette = _kind_palette(k for row in grid_kinds for k in row)
    order = list(palette)
    index = {k: i for i, k in enumerate(order)}
    ax.imshow([[index[k] for k in row] for row in grid_kinds], cmap=ListedColormap([palette[k] for k in order]),
              vmin=-0.5, vmax=len(order) - 0.5, aspect="auto", interpolation="nearest")
    if len(names) <= 400:  # beyond that the text would be unreadable anyway
        for y, row in enumerate(grid_kinds):
            for x, kind in enumerate(row):
                ax.text(x, y, _cell_text(kind), ha="center", va="center", fontsize=7,
                        color="white" if kind.kind in ("vector", "lora") else "black")
    labels, prefix = abbreviate_layers(names)
    step = max(1, len(names) // 200)
    ax.set_yticks(range(0, len(names), step))
    ax.set_yticklabels(labels[::step], fontsize=7)
    ax.set_xticks(range(len(TENSORS)))
    ax.set_xticklabels(TENSORS)
    ax.xaxis.tick_top()
    ax.set_xticks([x + 0.5 for x in range(len(TENSORS) - 1)], minor=True)
    ax.set_yticks([y + 0.5 for y in range(len(names) - 1)], minor=True)
    ax.grid(which="minor", color="white", lw=0.6)
    ax.tick_params(which="minor", length=0)
    ax.set_ylabel(f"layer (prefix '{prefix}' omitted)" if prefix else "layer")
    ax.set_title(f"chosen structure: {human(result.best.params)} params", pad=18)
    used = [k for k in order if any(k == c for row in grid_kinds for c in row)] or [_NONE_KIND]
    ax.legend(handles=[Patch(facecolor=palette[k], edgecolor="grey", label=str(k)) for k in used],
              loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)


def plot_search(result: SearchResult, path: str | os.PathLike, task: str = "classification") -> None:
    """Write one PNG: fitness vs params (left), the chosen structure's kinds per layer (right)."""
    from .objectives import fitness_label

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(result.best.structure.layers)
    height = min(120.0, max(5.0, 0.2 * n + 1.8))  # rows stay ~0.2 in tall for 48+ layers
    fig = Figure(figsize=(14, height))
    FigureCanvasAgg(fig)
    top = min(1.0, 5.0 / height)  # the scatter keeps a 5-inch panel at the top
    grid = fig.add_gridspec(2, 2, width_ratios=[1.6, 1], height_ratios=[top, 1 - top] if top < 1 else [1, 0.0001])
    _plot_front(fig.add_subplot(grid[0, 0]), result, fitness_label(task))
    _plot_structure(fig.add_subplot(grid[:, 1]), result)
    if top < 0.7:  # tall figure: the space under the scatter lists the runners-up
        _plot_top(fig.add_subplot(grid[1, 0]), result)
    fig.subplots_adjust(left=0.07, right=0.88, top=1 - 0.8 / height, bottom=0.5 / height, wspace=0.45)

    # Temp file next to the target (same filesystem, so os.replace is atomic); opened
    # with open() rather than mkstemp so the PNG gets the usual umask permissions.
    path = os.fspath(path)
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                       f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as fh:
            fig.savefig(fh, format="png", dpi=100)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
