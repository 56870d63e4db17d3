#!/usr/bin/env bash
# Every GPU check in one command, for a fresh GPU machine with torch and triton installed:
#   bench/gpu_all.sh [kernels] [kernel-tests] [tune-tokens] [profile-tokens] [attention] [train] [report-ablation]
#                    [report-ac] [report-bf16-decoder] [report-final] [bench] [eval]
#   (default: all but kernel-tests, which kernels includes, tune-tokens, profile-tokens and attention)
# attention: every installed backend against float64, then the table auto follows (install xformers
# or FlashAttention first to have them timed).
# Results (JSON and logs) go to $OUT (default bench/results); each part keeps going if another fails.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:$PWD/kernels${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
parts=("$@"); [ ${#parts[@]} -eq 0 ] && parts=(kernels train report-ablation report-ac report-bf16-decoder report-final bench eval)
python - <<'PY' | tee "$OUT/device.txt"
import torch, triton, platform
print(torch.cuda.get_device_name(), "| torch", torch.__version__, "| triton", triton.__version__, "| python",
      platform.python_version())
PY
status=0
for part in "${parts[@]}"; do
  echo "=== $part"
  case "$part" in
    kernels) python bench/gpu_check.py --out "$OUT/kernels.json" 2>&1 | tee "$OUT/kernels.log" ;;
    kernel-tests) python -m pytest -q -p no:cacheprovider tests/test_kernels_*.py 2>&1 | tee "$OUT/kernel-tests.log" ;;
    tune-tokens) python -m bench.tune_tokens --json "$OUT/tune-tokens.json" 2>&1 | tee "$OUT/tune-tokens.log" ;;
    # each token op's kernels one by one: where a pass's time goes beyond its main kernel
    profile-tokens) python -m bench.profile_op gather_C768 merge_C768 gather_C1024 merge_C1024 --rows 8 2>&1 \
                      | tee "$OUT/profile-tokens.log" ;;
    attention) python -m pytest -q -p no:cacheprovider tests/test_attention.py 2>&1 | tee "$OUT/attention-tests.log" \
                 || status=1
               python -m bench.attention --json "$OUT/attention.json" 2>&1 | tee "$OUT/attention.log" ;;
    train) rm -rf /tmp/ivn-gpu-run && python -m ivn_fast.pretrain --max-steps 60 --train.progress false --output_dir /tmp/ivn-gpu-run \
             2>&1 | tee "$OUT/train.log" && python -m ivn_fast.pretrain --stage 2 --max-steps 30 \
             --train.progress false --output_dir /tmp/ivn-gpu-run 2>&1 | tee -a "$OUT/train.log" ;;
    report-ablation) python -m bench.report --rows b8-align,b8-align-linear,b8-align-diffusion \
                       --json "$OUT/report-ablation.json" 2>&1 | tee "$OUT/report-ablation.log" ;;
    # the 24 GB target row under each activation-checkpointing mode, one eager baseline for all
    report-ac) python -m bench.report --rows b8-align-diffusion --steps 6 --fast "" \
                 --fast train.activation_checkpointing=op --fast train.activation_checkpointing=selective \
                 --fast train.activation_checkpointing=full --json "$OUT/report-ac.json" 2>&1 \
                 | tee "$OUT/report-ac.log" ;;
    # the diffusion head's products in bf16 (float32 residual stream): the 24 GB row under the
    # compiler's budgets and the fixed modes, then the final ViT-B Stage 1 setting with either head
    report-bf16-decoder) bf=model.decoder.fp32=false; ac=train.activation_checkpointing
               python -m bench.report --rows b8-align-diffusion --steps 6 --fast "$bf,$ac=budget,train.ac_budget=0.3" \
                 --fast "$bf,$ac=op" --fast "$bf" --fast "$bf,$ac=full" --fast "$bf,$ac=budget,train.ac_budget=0.5" \
                 --fast "$ac=full" --json "$OUT/report-bf16-decoder-b8.json" 2>&1 | tee "$OUT/report-bf16-decoder-b8.log"
               python -m bench.report --rows b16-stage1 --batch 16 --steps 6 --fast "" --fast "$bf" \
                 --json "$OUT/report-bf16-decoder-b16.json" 2>&1 | tee "$OUT/report-bf16-decoder-b16.log" ;;
    # 16-frame Stage 1 needs batch 16 on 80 GB without activation checkpointing; 32-frame Stage 2 batch 8
    report-final) python -m bench.report --rows b16-stage1,l16-stage1 --batch 16 --json "$OUT/report-final.json" \
                    2>&1 | tee "$OUT/report-final.log" && python -m bench.report --rows b32-stage2 --batch 8 \
                    --json "$OUT/report-stage2.json" 2>&1 | tee "$OUT/report-stage2.log" ;;
    bench) python -m pytest bench --benchmark-only -q 2>&1 | tail -60 | tee "$OUT/bench.log" ;;
    eval) python -m bench.eval_speed --json "$OUT/eval-speed.json" 2>&1 | tee "$OUT/eval-speed.log" ;;
    *) echo "unknown part $part"; status=2 ;;
  esac
  [ "${PIPESTATUS[0]}" -ne 0 ] && status=1
done
exit $status
