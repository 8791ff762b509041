"""Causal-LM training-step time (and peak memory on CUDA) on a LLaMA-shaped model.

    python benchmarks/lm_step.py [--hidden 256] [--layers 4] [--seq 128] [--batch 4]
                                 [--rounds 3] [--steps 4] [--device cpu|cuda]
    python benchmarks/lm_step.py --device cuda --hidden 2048 --layers 8 --seq 512   # a GPU

One step = forward + next-token cross-entropy + backward + AdamW step on random token ids,
on a LlamaForCausalLM with random weights (q, k, v, o, gate, up, down adapted). Every
variant is a copy of one model in one process; timing runs alternate round-robin so drift
hits all alike; the time is the median over timed steps. Where GEMMs dominate (large
hidden sizes, long sequences) launch overhead matters less: that is the ratio that applies
to language-model users. Variants:

  full        full fine-tuning
  peft_lora   PEFT LoRA r=8 (needs peft)
  peft_glora  PEFT GloraConfig r=8, A, B, C lora, D, E vector: the structure of `lowrank`
  lora        glorac, fixed structure A none / B lora(8): LoRA-equivalent
  lowrank     glorac, fixed structure A, B, C lora(8), D, E vector
  supernet    glorac, the paper space at rank 8, a new sampled structure every step
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

import glorac
from glorac.dsl.library import PAPER_SPACE
from glorac.sampling import StructureSampler
from common import adamw, add_optimizer_arg

TARGETS = '"model.layers.*.self_attn.{q_proj,k_proj,v_proj,o_proj}", "model.layers.*.mlp.{gate_proj,up_proj,down_proj}"'
FIXED = {"lora": "space f { B: lora(8) }", "lowrank": "space f { A: lora(8) B: lora(8) C: lora(8) D: vector E: vector }"}


def build(args, device):
    import transformers

    config = transformers.LlamaConfig(hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3,
                                      num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                                      num_key_value_heads=max(1, args.hidden // 256), vocab_size=args.vocab,
                                      max_position_embeddings=args.seq)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).to(device).train()


def variant(key: str, base, device):
    """(forward module, trainable parameters, per-step hook or None)."""
    model = copy.deepcopy(base)
    if key == "full":
        return model, list(model.parameters()), None
    if key.startswith("peft"):
        import peft

        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        config = (peft.LoraConfig(r=8, lora_alpha=8, target_modules=targets) if key == "peft_lora" else
                  peft.GloraConfig(r=8, target_modules=targets, config_A_B="lora", config_C="lora",
                                   config_D_E="vector"))
        model = peft.get_peft_model(model, config)
        return model, [p for p in model.parameters() if p.requires_grad], None
    text = (PAPER_SPACE + f"adapt {TARGETS} with paper(r=8)\n") if key == "supernet" else \
        (FIXED[key] + f"\nadapt {TARGETS} with f\n")
    supernet = glorac.build_supernet(glorac.loads_spec(text), model)
    params = list(supernet.trainable_parameters())
    if key != "supernet":
        return supernet, params, None
    sampler = StructureSampler(supernet.spaces(), seed=0)
    return supernet, params, lambda step: supernet.activate(sampler(step))


def step(model, opt, ids, hook, n, device, amp):
    if hook is not None:
        hook(n)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(input_ids=ids).logits
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    add_optimizer_arg(ap)
    args = ap.parse_args()
    device = torch.device(args.device)
    amp = device.type == "cuda"
    base = build(args, device)
    keys = ["full", "lora", "lowrank", "supernet"]
    try:
        import peft

        keys[1:1] = ["peft_lora"] + (["peft_glora"] if hasattr(peft, "GloraConfig") else [])
    except ImportError:
        pass
    runs = {}
    for key in keys:
        model, params, hook = variant(key, base, device)
        runs[key] = (model, adamw(params, args.optimizer), hook, sum(p.numel() for p in params))
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0)).to(device)
    times = {k: [] for k in keys}
    peak = {}
    for k, (model, opt, hook, _) in runs.items():  # warm-up, and the peak on CUDA
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        step(model, opt, ids, hook, 0, device, amp)
        if device.type == "cuda":
            peak[k] = torch.cuda.max_memory_allocated()
    for r in range(args.rounds):
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        for k in order:
            model, opt, hook, _ = runs[k]
            for n in range(args.steps):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                step(model, opt, ids, hook, n + 1, device, amp)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print(f"torch {torch.__version__}, {device}, threads {torch.get_num_threads()}, LLaMA-shaped hidden {args.hidden}, "
          f"layers {args.layers}, seq {args.seq}, batch {args.batch}, {'bf16 autocast' if amp else 'fp32'}")
    for k in keys:
        ratios = f"×{med[k] / med['full']:.2f} full"
        if "peft_lora" in med:
            ratios += f"  ×{med[k] / med['peft_lora']:.2f} peft_lora"
        if "peft_glora" in med:
            ratios += f"  ×{med[k] / med['peft_glora']:.2f} peft_glora"
        mem = f"  peak {peak[k] / 2**30:.2f} GiB" if k in peak else ""
        print(f"{k:11s} {med[k]:8.1f} ms/step  {ratios}  trainable {runs[k][3]:,}{mem}")


if __name__ == "__main__":
    main()
