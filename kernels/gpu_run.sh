#!/usr/bin/env bash
# One GPU session: versions, the kernel tests, then a benchmark (arguments after the mode).
#   bash kernels/gpu_run.sh OUTDIR [bench arguments...]
# Installs attnbook into the machine's own Python (torch and triton as they are there).
set -o pipefail
out=${1:?output folder}; shift
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{
  python3 -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv
  python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -2
} 2>&1 | tee "$out/env.txt"
start=$(date +%s)
python3 -m pytest tests/kernels -q -n 8 -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.txt" | tail -15
echo "gpu tests: $(( $(date +%s) - start )) s" | tee -a "$out/gpu_tests.txt"
if [ $# -gt 0 ]; then
  python3 -m attnbook.kernels.bench --out "$out" "$@" 2>&1 | tail -60
fi
