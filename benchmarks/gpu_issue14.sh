#!/usr/bin/env bash
# Issue 14's GPU measurement in one call (about 9 minutes on an H100/H200):
#   1. launches per step and per adapted layer (benchmarks/profile_step.py, vit_small, CUDA kernels);
#   2. step time and peak memory, glorac vs PEFT LoRA / GLoRA vs full FT, bf16 autocast,
#      alternating runs (benchmarks/train_step.py: vit_small and vit_base, batch 64);
#   3. the LLaMA-shaped stack, where GEMMs dominate (benchmarks/lm_step.py: hidden 2048, seq 512);
#   4. step 2 again with the adapter op under torch.compile (--compile-adapters).
# Each stage writes its full output to $OUT (or ./gpu-issue14) and the targets table ends the run.
#   bash benchmarks/gpu_issue14.sh            # on the GPU machine (needs timm, transformers, peft there)
#   SMOKE=1 bash benchmarks/gpu_issue14.sh    # tiny settings on any machine, to check the script itself
set -euo pipefail
cd "$(dirname "$0")"
out="${OUT:-gpu-issue14}"
mkdir -p "$out"
export PYTHONPATH="$(cd .. && pwd)${PYTHONPATH:+:$PYTHONPATH}"
if [[ "${SMOKE:-0}" == 1 ]]; then
    profile=(--quick --steps 1)
    steps=(--quick --rounds 1 --variants full,lora,lowrank,supernet,peft_lora,peft_glora)
    lm=(--hidden 64 --layers 2 --seq 32 --batch 2 --rounds 1 --steps 1)
    compiled=(--quick --rounds 1 --variants full,lora)  # inductor on a CPU: seconds per graph
else
    profile=(--model vit_small_patch16_224 --batch 64 --steps 3)
    steps=(--models vit_small_patch16_224,vit_base_patch16_224 --batch 64 --rounds 6 --steps 3)
    lm=(--device cuda --hidden 2048 --layers 4 --seq 512 --batch 4 --rounds 4 --steps 3)
    compiled=("${steps[@]}")
fi
python -c "import torch, timm, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
  torch.cuda.get_device_name() if torch.cuda.is_available() else '')" | tee "$out/env.txt"
python profile_step.py "${profile[@]}" 2>&1 | grep -v '^USDT' | tee "$out/profile.txt"
python train_step.py "${steps[@]}" 2>&1 | tee "$out/train_step.txt"
python lm_step.py "${lm[@]}" 2>&1 | tee "$out/lm_step.txt"
# The same step with the adapter op compiled (fixed structures: 4 graphs per model; the
# supernet compiles up to torch's recompile limit, then runs its other draws eagerly).
python train_step.py "${compiled[@]}" --compile-adapters 2>&1 | tee "$out/train_step_compiled.txt"
echo "== targets (train_step.py, eager adapter op) =="
grep -E "target <=" "$out/train_step.txt" || true
echo "== targets (train_step.py --compile-adapters) =="
grep -E "target <=" "$out/train_step_compiled.txt" || true
