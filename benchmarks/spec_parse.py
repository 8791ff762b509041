"""Spec parsing scales linearly: time to load specs of 1000 and 5000 rules, and one
statement spread over 1000 and 5000 lines (ratio ≈ 5 expected, 25 would be quadratic).

    python benchmarks/spec_parse.py
"""

from __future__ import annotations

import statistics
import time

import glorac


def rules(n: int) -> str:
    head = "space paper(r=8) { A: lora(r) | vector  B: lora(r) | none  E: vector }\n"
    return head + "".join(
        f'adapt "blocks.{i}.attn.qkv", "blocks.{i}.mlp.*" type Linear with paper(r={1 + i % 8})\n'
        for i in range(n))


def long_statement(n: int) -> str:
    pats = ",\n".join(f'    "blocks.{i}.attn.qkv"' for i in range(n))
    return "space s { B: lora(4) }\nadapt\n" + pats + "\n    type Linear |\n    Conv2d\n    with\n    s\n"


def best(text: str, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        glorac.loads_spec(text)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    glorac.loads_spec(rules(20))  # build the grammar once
    for name, make in (("rules", rules), ("one long statement", long_statement)):
        small, large = best(make(1000)), best(make(5000))
        print(f"{name:20s} 1000: {small * 1e3:7.1f} ms   5000: {large * 1e3:7.1f} ms   "
              f"ratio {large / small:.2f} (linear ≈ 5)")
    print(f"median per rule: {statistics.median([best(rules(2000)) / 2000 * 1e6]):.0f} µs")


if __name__ == "__main__":
    main()
