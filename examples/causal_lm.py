"""Fine-tune a causal language model with the glorac command line, then generate with transformers.

    glorac compile --task causal-lm  ->  glorac train  ->  glorac search  ->  glorac fold  ->  glorac eval
    ->  AutoModelForCausalLM.from_pretrained(folded).generate(...)

So that it runs anywhere in seconds, the base model is a tiny LLaMA with random weights built
from `transformers.LlamaConfig`, with a word-level tokenizer, and the data is a made-up
language written to JSONL on the fly: counting ("three four five six") and a few fixed
sentences. With a real model, only the compile line changes (`--model hf:PATH_TO_LLAMA`).

Every glorac step is a CLI call (`python -m glorac ...`, the same as the `glorac` command),
printed before it runs, so the transcript doubles as a shell recipe.

    python examples/causal_lm.py --quick     # about 45 s on 2 CPU cores (five CLI processes)
    python examples/causal_lm.py             # a bigger model and more training
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

# The shipped LLaMA spec (q/k/v/o and the MLP projections of every decoder layer). Specs are
# not installed with the package: this points into the glorac source tree; --spec overrides.
LLAMA_SPEC = Path(__file__).resolve().parent.parent / "specs" / "llama.glora"

NUMBERS = "one two three four five six seven eight nine ten".split()
SENTENCES = ["the cat sat on the mat", "the dog ran in the park", "a bird sang in the tree"]
SPECIAL = ["<unk>", "<bos>", "<eos>"]

FULL = dict(hidden=64, layers=4, records=(800, 100, 100), budget="40K", epochs=20, population=12, generations=3)
QUICK = dict(hidden=32, layers=2, records=(160, 40, 40), budget="6K", epochs=20, population=4, generations=1)


def make_records(n: int, seed: int) -> list[dict]:
    """`{"text": ...}` records: the loss is taken on every token (prompt/completion records
    `{"prompt": ..., "completion": ...}` would take it on the completion only)."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        if rng.random() < 0.7:
            start = rng.randrange(len(NUMBERS) - 3)
            records.append({"text": " ".join(NUMBERS[start:start + rng.randint(3, len(NUMBERS) - start)])})
        else:
            records.append({"text": rng.choice(SENTENCES)})
    return records


def write_data(root: Path, sizes: tuple[int, int, int]) -> Path:
    """ROOT/train.jsonl, val.jsonl (the search scores on it), test.jsonl."""
    root.mkdir(parents=True, exist_ok=True)
    for seed, (split, n) in enumerate(zip(("train", "val", "test"), sizes)):
        lines = (json.dumps(record) for record in make_records(n, seed))
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def write_tiny_llama(root: Path, hidden: int, layers: int) -> Path:
    """A random-weight LlamaForCausalLM plus a word-level tokenizer, in one directory, as a
    model from the hub would come: glorac reads the tokenizer from the model's directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = SPECIAL + sorted({w for s in SENTENCES for w in s.split()} | set(NUMBERS))
    vocab = {w: i for i, w in enumerate(words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # An EOS token lets glorac end every record with it, so the model learns where text stops.
    # Decoder-only models ship no pad token; glorac pads with EOS then.
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<bos>",
                                        eos_token="<eos>")
    tokenizer.save_pretrained(root)

    config = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, tie_word_embeddings=False,
                         bos_token_id=vocab["<bos>"], eos_token_id=vocab["<eos>"], pad_token_id=vocab["<eos>"])
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root)
    return root


def glorac_cli(*args) -> None:
    """Run one glorac command, echoing it; stop the script if it fails (glorac says why)."""
    command = [sys.executable, "-m", "glorac", *map(str, args)]
    print("$ glorac " + shlex.join(command[3:]), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command)
    if done.returncode != 0:
        sys.exit(f"glorac {args[0]} failed with exit status {done.returncode}")
    print(f"  ({time.perf_counter() - start:.1f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="glorac-examples/causal_lm", help="directory for this run's files")
    parser.add_argument("--spec", default=str(LLAMA_SPEC), help="base spec to include (default: specs/llama.glora)")
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke run of about 45 s")
    args = parser.parse_args()
    size = QUICK if args.quick else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    base = write_tiny_llama(out / "base", size["hidden"], size["layers"])
    data = write_data(out / "data", size["records"])
    # specs/llama.glora as is, with a budget that fits this tiny model (its own is 20M).
    spec = out / "tiny-llama.glora"
    spec.write_text(f'include "{Path(args.spec).resolve().as_posix()}"\n\nbudget {size["budget"]}\n')

    # --task causal-lm keeps the LM head (AutoModelForCausalLM) instead of asking for classes.
    glorac_cli("compile", spec, "--model", f"hf:{base}", "--task", "causal-lm", "-o", out / "supernet.pt", "--force")
    # Any spec setting can be overridden by a flag of the same name (--epochs, --lr, ...).
    glorac_cli("train", out / "supernet.pt", "--data", data, "-o", out / "trained.pt", "--force",
               "--epochs", size["epochs"], "--warmup-epochs", 2, "--lr", "2e-2", "--batch-size", 16, "--no-progress")
    # The search's fitness for a language model is the val token loss (lower is better).
    glorac_cli("search", out / "trained.pt", "--data", data, "-o", out / "searched.pt", "--force",
               "--structure", out / "structure.json", "--population", size["population"],
               "--generations", size["generations"], "--parents", 2, "--mutations", 4, "--crossovers", 4,
               "--no-progress")
    # A Hugging Face directory: the stock LlamaForCausalLM, the tokenizer and generation config.
    glorac_cli("fold", out / "searched.pt", "-o", out / "folded", "--force")
    glorac_cli("eval", out / "folded", "--data", data, "--split", "test")

    # From here on: plain transformers, no glorac.
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.logging.disable_progress_bar()

    model = AutoModelForCausalLM.from_pretrained(out / "folded").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "folded")
    print(f"reloaded {type(model).__name__} from {out / 'folded'}; greedy continuations:")
    for prompt in ("three four", "the cat"):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        generated = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        print(f"  {prompt!r} -> {tokenizer.decode(generated[0], skip_special_tokens=True)!r}")


if __name__ == "__main__":
    main()
