#!/usr/bin/env bash
# Builds quarry with CUDA (`--features cuda`) on a machine that has no CUDA toolkit and no GPU,
# for a GPU machine that has the driver and the CUDA 13 libraries but no Rust toolchain. This
# is how the CUDA binary measured in issue #7's notes was made (Debian 12 host, H200 device with
# driver 580 / CUDA 13.0, PyTorch's cu13 libraries).
#
#   tools/build-cuda.sh [WORK_DIR]      (default: ./cuda-build; ~19 min on 2 cores)
#
# Where a CUDA toolkit is installed (nvcc on PATH, libraries in /usr/local/cuda), a plain
# `CUDA_COMPUTE_CAP=90 cargo build --release --features cuda` does the same; this script only
# supplies what such a machine lacks:
#   * nvcc, its headers and libdevice, from NVIDIA's PyPI wheels (candle compiles its kernels to
#     PTX with nvcc at build time; pick the CUDA line of the device's driver: 13.0 for 580);
#   * the libraries cudarc links against (cuBLAS, cuBLASLt, cuRAND, NVRTC, the runtime): from
#     the same wheels, found by their unversioned names;
#   * libcuda.so, which comes with the driver, not the toolkit: a stub that only defines the
#     driver-API symbols cudarc declares, so that the link succeeds. The binary records
#     libcuda.so.1 as needed and the device's real driver library is what runs.
# On the device: LD_LIBRARY_PATH must reach libcublas.so.13, libcublasLt.so.13, libcurand.so.10
# and libcudart.so.13 (e.g. PyTorch's site-packages/nvidia/cu13/lib).
set -euo pipefail

WORK=$(realpath -m "${1:-cuda-build}")
CUDA_LINE=${CUDA_LINE:-13.0}
PYTHON=${PYTHON:-python3}
mkdir -p "$WORK/wheels" "$WORK/root"

"$PYTHON" -m pip download --no-deps -d "$WORK/wheels" \
  "nvidia-cuda-nvcc==$CUDA_LINE.*" "nvidia-cuda-runtime==$CUDA_LINE.*" \
  "nvidia-cuda-crt==$CUDA_LINE.*" "nvidia-nvvm==$CUDA_LINE.*" "nvidia-cuda-cccl==$CUDA_LINE.*" \
  "nvidia-cublas==${CUDA_LINE%%.*}.*" "nvidia-cuda-nvrtc==$CUDA_LINE.*" "nvidia-curand>=10.4"
for w in "$WORK"/wheels/*.whl; do unzip -q -o "$w" -d "$WORK/root"; done

CUDA_HOME="$WORK/root/nvidia/cu${CUDA_LINE%%.*}"
LIB="$CUDA_HOME/lib"
chmod +x "$CUDA_HOME"/bin/* "$CUDA_HOME"/nvvm/bin/*
for name in cublas cublasLt nvrtc curand cudart; do
  real=$(find "$LIB" -maxdepth 1 -name "lib$name.so.*" ! -name "*builtins*" | sort | head -1)
  [ -n "$real" ] || { echo "no lib$name.so.* in $LIB" >&2; exit 1; }
  ln -sf "$(basename "$real")" "$LIB/lib$name.so"
done

# The driver stub: every cu* function cudarc's driver bindings declare.
CUDARC=$(cargo metadata --format-version 1 --features cuda | "$PYTHON" -c '
import json, sys
print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc"))')
grep -ohE "\bfn cu[A-Za-z0-9_]+" "$(dirname "$CUDARC")/src/driver/sys/mod.rs" | awk '{print $2}' |
  sort -u | awk '{print "int " $1 "(void) { return 999; }"}' > "$WORK/libcuda-stub.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LIB/libcuda.so" "$WORK/libcuda-stub.c"

export CUDA_HOME PATH="$CUDA_HOME/bin:$PATH" CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
cargo build --release --features cuda --bin quarry
echo "built target/release/quarry (CUDA, compute capability $CUDA_COMPUTE_CAP)"
