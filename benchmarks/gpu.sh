#!/usr/bin/env bash
# The GPU lane's figures, each printed as it comes; about 4 minutes on one GPU (each step is capped).
#
#   benchmarks/gpu.sh
#
# 1. the card, torch and CUDA versions;
# 2. the gpu tests: `python -m pytest -q -m gpu tests/test_gpu.py` (CUDA equals the CPU, the fast forward on CUDA);
# 3. benchmarks/whole_build.py --device cuda, then --device cpu (ResNet-50, 8 images at 224², every cheap stage;
#    3 repeats each): the build's wall time, per stage, against a bare forward+backward on the same device;
# 4. benchmarks/cam_suite.py --device cuda: six gradient CAMs against a bare pass (ResNet-50, 8 images at 224²);
#    pytorch-grad-cam's column only where it is installed (the lent machine has none of the reference packages);
# 5. the evaluation's forward on CUDA (reportgen.metrics.forward.inference_forward against the eager model):
#    ResNet-18, 64 images at 224², median of 5.
# Needs only what reportgen installs. Exits 1 when a step fails (the others still run).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's reportgen
failed=0
step() {  # step SECONDS TITLE COMMAND...: run COMMAND under a time limit, say when it fails
    local limit=$1 title=$2
    shift 2
    echo
    echo "== $title"
    timeout "$limit" "$@" || { echo "!! $title: exit $?"; failed=1; }
}

step 30 "device" python -c "
import torch
assert torch.cuda.is_available(), 'no CUDA device: torch.cuda.is_available() is False'
print(torch.cuda.get_device_name(0), f'{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB,',
      'torch', torch.__version__, 'CUDA', torch.version.cuda)"
[ "$failed" = 0 ] || exit 1  # no card: nothing else can run

step 120 "gpu tests" python -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
step 90 "whole build on cuda" python benchmarks/whole_build.py --device cuda --repeats 3
step 90 "whole build on cpu" python benchmarks/whole_build.py --device cpu --repeats 3
reference=(--no-reference)
if python -c "import pytorch_grad_cam" 2>/dev/null; then reference=(); fi
step 60 "cam suite on cuda" python benchmarks/cam_suite.py --device cuda --repeats 5 "${reference[@]}"
step 60 "evaluation forward on cuda" python -c "
import statistics, time, warnings, torch, torchvision
from reportgen.metrics.forward import inference_forward
torch.manual_seed(0)
model = torchvision.models.resnet18().eval().cuda()
x = torch.randn(64, 3, 224, 224, device='cuda')
with warnings.catch_warnings():
    warnings.simplefilter('error')  # the fast copy, not the eager fallback
    fast = inference_forward(model, x[:1])
def eager(batch):
    with torch.inference_mode():
        return model(batch)
for name, forward in (('eager', eager), ('inference_forward', fast)):
    forward(x)  # warm-up
    times = []
    for _ in range(5):
        torch.cuda.synchronize()
        start = time.perf_counter()
        forward(x)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    print(f'{name:18s} {statistics.median(times) / 64 * 1e3:7.3f} ms an image (median of 5, batch 64)')"
exit "$failed"
