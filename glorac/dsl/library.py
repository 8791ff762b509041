"""Spec text every user of glorac needs at hand (tests, benchmarks, the demo).

``PAPER_SPACE`` is the search space of the GLoRA paper, identical to ``space paper`` in
``specs/paper.glora`` (a test keeps the two in step); prepend it to a spec's text.
"""

PAPER_SPACE = """\
space paper(r=8) {
    A: lora(r) | vector | scalar | none
    B: lora(r) | vector | scalar | none
    C: lora(r) | vector | none
    D: vector | scalar | none
    E: vector | scalar | none
}
"""
