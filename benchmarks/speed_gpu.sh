#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md ("Speed and scale"), one step per call (each < 10 minutes).
# Stage the data on this machine first: benchmarks/stage_gpu.sh configs/beauty.yaml amazon-beauty
# then on the GPU machine, carrying .carry:   benchmarks/speed_gpu.sh decode|decode-bf16|train|compile|profile
set -euo pipefail
export SIDREC_DATA=.carry/data PYTHONPATH=.
py=${PYTHON:-python}
case ${1:?usage: speed_gpu.sh decode|decode-bf16|train|compile|profile} in
  decode)       # all 22,363 Beauty test users with ours, 2,000 with transformers (fp32 both)
    $py benchmarks/decode_vs_hf.py --users 0 --hf-users 2000 --batch-size 4096 --hf-batch-size 256 \
        --device cuda --work .carry/bench-decode --out benchmarks/results/decode_vs_hf_cuda.json ;;
  decode-bf16)  # ours under bf16 autocast, as `sidrec evaluate` decodes on CUDA
    $py benchmarks/decode_vs_hf.py --users 0 --hf-users 2000 --batch-size 4096 --hf-batch-size 256 \
        --device cuda --bf16 --work .carry/bench-decode --out benchmarks/results/decode_vs_hf_cuda_bf16.json ;;
  train)   $py benchmarks/train_speed.py --batch-size 1024 --steps 100 ;;
  compile) $py benchmarks/train_speed.py --batch-size 1024 --steps 100 --warmup 10 --compile ;;
  profile) $py benchmarks/train_speed.py --batch-size 1024 --steps 20 --profile ;;
  *) echo "unknown step $1" >&2; exit 2 ;;
esac
