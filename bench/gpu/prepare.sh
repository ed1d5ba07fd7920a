#!/usr/bin/env bash
# Lays out .gpu/ (ignored by .gitignore, carried to the device by `run`'s carry) for
# bench/gpu/gpu_check.sh:
#   .gpu/payload.tar.gz    llama.cpp as llama-cpp-python 0.3.36 vendors it (other backends, docs,
#                          tests, model vocabularies, UI sources stripped), llama-cpp-python's own
#                          Python package llama_cpp/, and nexa's src/nexa from the project checkout
#   .gpu/smollm2_meta.gguf SmolLM2-135M-Instruct's metadata (tokenizer, chat template), no tensors
#   .gpu/whl/              cp312 wheels the device lacks (fastapi, starlette, pydantic, uvicorn...)
# Usage, from the checkout root: bash bench/gpu/prepare.sh SMOLLM2_GGUF
set -eu
ROOT=$(git rev-parse --show-toplevel); HERE=$(cd "$(dirname "$0")" && pwd)
MAIN=$ROOT
C=${NEXA_GPU_CACHE:-$HOME/.cache/nexa/gpu}; S=$C/gpu-stage; G=$ROOT/.gpu
MODEL=${1:?give the SmolLM2-135M-Instruct Q4_1 GGUF path (the one the store fetched)}
mkdir -p "$C/sdist" "$G/whl"
ls "$C"/sdist/llama_cpp_python-0.3.36.tar.gz >/dev/null 2>&1 \
  || pip download -q --no-deps --no-binary :all: --dest "$C/sdist" llama-cpp-python==0.3.36
rm -rf "$S" "$C/src"; mkdir -p "$S" "$C/src"
tar xzf "$C/sdist/llama_cpp_python-0.3.36.tar.gz" -C "$C/src"
P=$C/src/llama_cpp_python-0.3.36; V=$P/vendor/llama.cpp
mkdir -p "$S/llama.cpp"
(cd "$V" && cp -a CMakeLists.txt LICENSE cmake include src common vendor scripts gguf-py licenses ggml tools "$S/llama.cpp/")
(cd "$S/llama.cpp" && rm -rf ggml/src/ggml-{cann,openvino,webgpu,et,metal,hexagon,sycl,vulkan,opencl,virtgpu,zdnn,zendnn,musa,blas,rpc} \
   tools/ui/src tools/ui/tests tools/ui/package-lock.json tools/mtmd/test-*.* tools/mtmd/tests \
   tools/server/tests tools/server/bench tools/server/README.md gguf-py/tests)
cp -a "$P/llama_cpp" "$S/" && rm -rf "$S/llama_cpp/server"
mkdir -p "$S/nexa_src" && cp -a "$MAIN/src/nexa" "$S/nexa_src/"
find "$S" -name __pycache__ -prune -exec rm -rf {} +
(cd "$S" && tar czf "$G/payload.tar.gz" llama.cpp llama_cpp nexa_src)
PYTHONPATH=$S/llama.cpp/gguf-py python3 "$HERE/make_model.py" --meta "$MODEL" --out "$G/smollm2_meta.gguf" --shape meta
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$G/whl" fastapi uvicorn diskcache python-multipart pydantic-settings httptools
du -sh "$G"; ls -la "$G" "$G/whl"
