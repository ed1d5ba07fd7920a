#!/usr/bin/env bash
# GPU check: does nexa offload GGUF text models to the GPU, and how fast does it stream next to
# llama.cpp's own llama-server, both running the same llama.cpp (the source that
# llama-cpp-python 0.3.36 vendors) built once with CUDA, on the same GPU, in the same run?
# Helpers beside this script: make_model.py, bench.py. nexa starts the ordinary way (`python -m nexa
# server`), so the import order that once crashed every CUDA load (src/nexa/native.py) is checked too;
# its start-up log says where the layers went ("N/M layers on the GPU"), and /health the same per model.
#
# Run from the checkout root with .gpu/ there (made by bench/gpu/prepare.sh):
#   bash bench/gpu/gpu_check.sh                     # device: CUDA build for sm_90, H200
#   GPU_CHECK_CPU=1 GPU_CHECK_PY=/path/python bash bench/gpu/gpu_check.sh   # local dry run, CPU only
# Everything it writes for a reader goes to $OUT (run.log, build.log, results.jsonl,
# server-logs.txt, smi.csv, summary.txt).
set -u -o pipefail
ROOT=$(git rev-parse --show-toplevel 2>/dev/null || pwd)
G=$ROOT/.gpu
TOOLS=$(cd "$(dirname "$0")" && pwd)
CPU=${GPU_CHECK_CPU:-0}
PY=${GPU_CHECK_PY:-python3}
W=${GPU_CHECK_WORK:-/tmp/gpuw}
OUT=${OUT:-/tmp/gpu_out}
BUDGET=${GPU_CHECK_BUDGET:-560}   # seconds this script may take; later stages are skipped past it
JOBS=${GPU_CHECK_JOBS:-$(nproc)}
TOKENS=${GPU_CHECK_TOKENS:-256}
T0=$(date +%s)
rm -rf "$W"; mkdir -p "$W" "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1
el() { echo $(( $(date +%s) - T0 )); }
say() { echo "[$(el)s $(date +%T)] $*"; }
left() { echo $(( BUDGET - $(el) )); }
has_smi() { command -v nvidia-smi >/dev/null 2>&1; }

say "gpu_check start: CPU=$CPU PY=$PY JOBS=$JOBS BUDGET=${BUDGET}s W=$W OUT=$OUT"

# ---- 0. what the machine is ------------------------------------------------------------------
if has_smi; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.max.sm --format=csv || true
fi
(nvcc --version | tail -2; cmake --version | head -1; gcc --version | head -1; ldd --version | head -1;
 $PY --version; echo "nproc $(nproc)"; free -g | head -2; df -h /tmp | tail -1) 2>&1 | sed 's/^/  /'

# ---- 1. payload, wheels ------------------------------------------------------------------------
tar xzf "$G/payload.tar.gz" -C "$W" || { say "FATAL: payload missing"; exit 1; }
export PYTHONPATH_SITE=/tmp/site
if [ "$CPU" != 1 ] && [ "${GPU_CHECK_WHEELS:-1}" = 1 ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$G"/whl/*.whl \
    || { say "FATAL: wheel install failed"; exit 1; }
fi
PP_APP=/tmp/site:$W/nexa_src:$W/py          # nexa + llama_cpp (+ carried wheels)
PP_GGUF=$W/llama.cpp/gguf-py
say "payload unpacked, wheels installed"

# ---- 2. models: random weights of real SmolLM2 shapes (F16), written while llama.cpp builds ----
( set -e
  PYTHONPATH=$PP_GGUF $PY "$TOOLS/make_model.py" --meta "$G/smollm2_meta.gguf" --out "$W/m135-f16.gguf" --shape 135m
  if [ "$CPU" != 1 ]; then
    PYTHONPATH=$PP_GGUF $PY "$TOOLS/make_model.py" --meta "$G/smollm2_meta.gguf" --out "$W/m17-f16.gguf" --shape 1.7b
  fi ) > "$W/make_model.log" 2>&1 &
MK_PID=$!

# ---- 3. CUDA libraries cmake may not find by itself (a toolkit laid out from pip wheels) --------
EXTRA=/tmp/cuda-extra/lib; mkdir -p "$EXTRA"
# -march=native (GGML_NATIVE, the default) but no AMX: on this workplace's Firecracker VMs the CPU
# lists amx_tile yet AMX instructions fault (SIGILL in ggml's AMX matmul, seen on the dev VM).
# Only CPU-side matmuls use AMX; with every layer on the GPU the CPU backend hardly runs.
NOAMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
CM_CUDA=("-DCMAKE_C_FLAGS=$NOAMX" "-DCMAKE_CXX_FLAGS=$NOAMX")
LINKDIRS=""
if [ "$CPU" != 1 ]; then
  NV_DIRS=$($PY -c 'import nvidia, os; print(" ".join(os.path.realpath(p) for p in nvidia.__path__))' 2>/dev/null || true)
  if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=/usr/local/cuda/bin:$PATH; fi
  # first hit wins, in this order: the toolkit, the system, then the wheels PyTorch brought
  SEARCH="/usr/local/cuda/ /usr/lib/x86_64-linux-gnu/ /usr/include/ $NV_DIRS"
  first() { local d; for d in $SEARCH; do find "$d" -maxdepth 4 -name "$1" 2>/dev/null | sort; done | head -1; }
  CUBLAS_H=$(first cublas_v2.h)
  CUBLAS_SO=$(first 'libcublas.so*')
  CUBLASLT_SO=$(first 'libcublasLt.so*')
  LIBCUDA=$( (ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 /{print $NF; exit}'); true)
  [ -n "$LIBCUDA" ] || LIBCUDA=$(find /usr/local/nvidia /usr/lib/x86_64-linux-gnu /usr/lib64 -maxdepth 3 -name 'libcuda.so*' 2>/dev/null | sort | head -1)
  say "found: cublas_v2.h=$CUBLAS_H libcublas=$CUBLAS_SO libcublasLt=$CUBLASLT_SO libcuda=$LIBCUDA"
  if [ -n "$CUBLAS_SO" ]; then
    ln -sf "$CUBLAS_SO" "$EXTRA/libcublas.so"; CM_CUDA+=("-DCUDA_cublas_LIBRARY=$EXTRA/libcublas.so")
    LINKDIRS="$(dirname "$CUBLAS_SO")"
  fi
  if [ -n "$CUBLASLT_SO" ]; then
    ln -sf "$CUBLASLT_SO" "$EXTRA/libcublasLt.so"; CM_CUDA+=("-DCUDA_cublasLt_LIBRARY=$EXTRA/libcublasLt.so")
    LINKDIRS="$LINKDIRS:$(dirname "$CUBLASLT_SO")"
  fi
  if [ -n "$LIBCUDA" ]; then
    ln -sf "$LIBCUDA" "$EXTRA/libcuda.so"; CM_CUDA+=("-DCUDA_cuda_driver_LIBRARY=$EXTRA/libcuda.so")
    LINKDIRS="$LINKDIRS:$(dirname "$LIBCUDA")"
  fi
  INC=""
  if [ -n "$CUBLAS_H" ]; then  # only the cuBLAS headers: the toolkit's own CUDA headers stay first
    mkdir -p /tmp/cuda-extra/include && ln -sf "$(dirname "$CUBLAS_H")"/cublas*.h /tmp/cuda-extra/include/
    INC="-I/tmp/cuda-extra/include"
  fi
  RL=""
  for d in $(echo "$LINKDIRS" | tr ':' ' '); do RL="$RL -Wl,-rpath-link,$d -L$d"; done
  CM_CUDA+=(-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90-real "-DCMAKE_CUDA_FLAGS=$INC" "-DCMAKE_CXX_FLAGS=$INC $NOAMX"
            "-DCMAKE_EXE_LINKER_FLAGS=$RL" "-DCMAKE_SHARED_LINKER_FLAGS=$RL")
  export LD_LIBRARY_PATH="$LINKDIRS:${LD_LIBRARY_PATH:-}"
fi

# ---- 4. build llama.cpp once: llama-server, llama-quantize, and the shared libraries -----------
B=$W/build
cm_configure() {
  cmake -S "$W/llama.cpp" -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF "${CM_CUDA[@]}" "$@"
}
say "cmake configure"
if ! cm_configure > "$OUT/build.log" 2>&1; then
  say "configure failed; retrying with GGML_CUDA_NO_VMM=ON (no driver library needed)"
  tail -30 "$OUT/build.log"
  rm -rf "$B"
  cm_configure -DGGML_CUDA_NO_VMM=ON >> "$OUT/build.log" 2>&1 || { say "FATAL: configure failed"; tail -40 "$OUT/build.log"; exit 1; }
fi
grep -E "CUDA Toolkit found|Using CMAKE_CUDA_ARCH|CUDA host compiler|Including .* backend|GGML_NATIVE|x86 detected" "$OUT/build.log" | sed 's/^/  /'
[ "${GPU_CHECK_STOP_AFTER:-}" = configure ] && { say "stop after configure"; kill $MK_PID 2>/dev/null; exit 0; }
say "build (-j$JOBS): llama-server llama-quantize"
if ! cmake --build "$B" -j "$JOBS" --target llama-server llama-quantize >> "$OUT/build.log" 2>&1; then
  say "FATAL: build failed"; grep -E "error|FAILED" "$OUT/build.log" | head -30; tail -20 "$OUT/build.log"; exit 1
fi
say "build done"
ls -la "$B/bin" | grep -E "\.so|llama-(server|quantize)" | awk '{print "  " $5, $9, $10, $11}'

# llama-cpp-python 0.3.36's own Python package over these libraries (as its wheel lays them out:
# llama_cpp/lib/libllama.so and friends).
mkdir -p "$W/py" && cp -a "$W/llama_cpp" "$W/py/" && mkdir -p "$W/py/llama_cpp/lib" && cp -a "$B"/bin/lib*.so* "$W/py/llama_cpp/lib/"
export LD_LIBRARY_PATH="$B/bin:${LD_LIBRARY_PATH:-}"
PYTHONPATH=$PP_APP $PY -c "import llama_cpp; print('  llama_cpp', llama_cpp.__version__, 'from', llama_cpp.__file__, '; supports_gpu_offload =', bool(llama_cpp.llama_supports_gpu_offload()))" \
  || { say "FATAL: llama_cpp import failed"; exit 1; }

PYTHONPATH=$PP_APP $PY -m nexa gpu 2>&1 | sed 's/^/  nexa gpu | /'

# ---- 5. quantize: the 135M shape to the real file's types (token_embd Q8_0, rest Q4_1); 1.7B to Q4_K_M
wait $MK_PID; MK_RC=$?
cat "$W/make_model.log" | sed 's/^/  /'
[ $MK_RC -eq 0 ] || say "WARNING: make_model exited $MK_RC"
Q=$B/bin/llama-quantize
if [ -f "$W/m135-f16.gguf" ]; then
  $Q --token-embedding-type q8_0 "$W/m135-f16.gguf" "$W/smollm2-135m-shape-random.Q4_1.gguf" Q4_1 "$JOBS" > "$W/quant135.log" 2>&1 \
    && rm -f "$W/m135-f16.gguf" || { say "quantize 135m failed"; tail -5 "$W/quant135.log"; }
fi
if [ -f "$W/m17-f16.gguf" ]; then
  $Q "$W/m17-f16.gguf" "$W/smollm2-1.7b-shape-random.Q4_K_M.gguf" Q4_K_M "$JOBS" > "$W/quant17.log" 2>&1 \
    && rm -f "$W/m17-f16.gguf" || { say "quantize 1.7b failed"; tail -5 "$W/quant17.log"; }
fi
grep -h -E "model size|quant size|total time" "$W"/quant*.log 2>/dev/null | sed 's/^/  /'
ls -la "$W"/*.gguf 2>/dev/null | awk '{print "  " $5, $9}'
say "models ready"

# ---- 6. servers and load -----------------------------------------------------------------------
if has_smi; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw,clocks.sm --format=csv -lms 500 > "$OUT/smi.csv" 2>&1 &
  SMI_PID=$!
fi
: > "$OUT/results.jsonl"; : > "$OUT/server-logs.txt"
if command -v curl >/dev/null 2>&1; then
  http_ok() { curl -sf "$1" >/dev/null 2>&1; }
else
  http_ok() { $PY -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" >/dev/null 2>&1; }
fi
wait_health() {  # port pid seconds
  local i
  for i in $(seq 1 $(( $3 * 4 ))); do
    kill -0 "$2" 2>/dev/null || return 1
    http_ok "http://127.0.0.1:$1/health" && return 0
    sleep 0.25
  done
  return 1
}
stop() {  # pid
  kill "$1" 2>/dev/null
  for _ in $(seq 1 40); do kill -0 "$1" 2>/dev/null || break; sleep 0.25; done
  kill -9 "$1" 2>/dev/null; wait "$1" 2>/dev/null
}
gpu_mem() {  # label
  has_smi || return 0
  echo "  nvidia-smi after load ($1): $(nvidia-smi --query-gpu=memory.used --format=csv,noheader) used on the GPU;" \
       "processes: $(nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader | tr '\n' ';')"
}
run_bench() {  # port label c r
  PYTHONPATH=/tmp/site timeout 150 $PY "$TOOLS/bench.py" "http://127.0.0.1:$1" -c "$3" -r "$4" -t "$TOKENS" --label "$2" \
    | tee -a "$OUT/results.jsonl" | sed 's/^/  /' || say "bench $2 failed"
}
serve_and_bench() {  # kind name model port
  local kind=$1 name=$2 model=$3 port=$4 log=$W/$1-$2.log pid
  say "$kind / $name: start"
  if [ "$kind" = llama-server ]; then
    "$B/bin/llama-server" -m "$model" -ngl 99 -np 8 -c 16384 -fa on -no-kvu --fit off -t "$JOBS" -lv 4 \
      --host 127.0.0.1 --port "$port" > "$log" 2>&1 &
  else
    PYTHONPATH=$PP_APP PYTHONUNBUFFERED=1 $PY -m nexa server -lp "$model" --host 127.0.0.1 \
      --port "$port" --parallel 8 --nctx 2048 > "$log" 2>&1 &
  fi
  pid=$!
  if wait_health "$port" "$pid" 120; then
    say "$kind / $name: healthy"
    grep -h -E "offloaded|layers on the GPU|model buffer size|KV buffer size|compute buffer size|ggml_cuda_init|Device 0:|n_slots|flash_attn  |loaded .* in|supports_gpu_offload|error|ERROR" "$log" | sed 's/^/  | /' | head -30
    [ "$kind" = nexa ] && http_ok "http://127.0.0.1:$port/health" && command -v curl >/dev/null 2>&1 \
      && echo "  | /health: $(curl -s "http://127.0.0.1:$port/health")"
    gpu_mem "$kind $name"
    run_bench "$port" "$kind $name c=1" 1 3
    run_bench "$port" "$kind $name c=8" 8 2
  else
    say "$kind / $name: did not become healthy"; tail -40 "$log"
  fi
  stop "$pid"
  { echo "===== $kind $name ($log)"; cat "$log"; } >> "$OUT/server-logs.txt"
}
for spec in "135m:$W/smollm2-135m-shape-random.Q4_1.gguf:8101" "1.7b:$W/smollm2-1.7b-shape-random.Q4_K_M.gguf:8201"; do
  IFS=: read -r name model port <<< "$spec"
  [ -f "$model" ] || { say "skip $name: no model"; continue; }
  if [ "$(left)" -lt 60 ]; then say "skip $name: only $(left)s left"; continue; fi
  serve_and_bench llama-server "$name" "$model" "$port"
  serve_and_bench nexa "$name" "$model" $(( port + 1 ))
done
[ -n "${SMI_PID:-}" ] && kill "$SMI_PID" 2>/dev/null

# ---- 7. summary ----------------------------------------------------------------------------------
$PY - "$OUT/results.jsonl" <<'EOF' | tee "$OUT/summary.txt"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
by = {r["label"]: r for r in rows}
print("label | tok/s (aggregate) | median TTFT s | median per-stream tok/s | completion tokens | finish")
for r in rows:
    print(f'{r["label"]} | {r["aggregate_tok_s"]} | {r["median_ttft_s"]} | {r["median_stream_tok_s"]} | '
          f'{r["completion_tokens"]} (per request {r["tokens_per_request_min_max"]}) | {r["finish_reasons"]}')
for name in ("135m", "1.7b"):
    for c in (1, 8):
        a, b = by.get(f"nexa {name} c={c}"), by.get(f"llama-server {name} c={c}")
        if a and b:
            print(f"{name} c={c}: nexa/llama-server tok/s = {a['aggregate_tok_s'] / b['aggregate_tok_s']:.2f}, "
                  f"TTFT nexa/llama-server = {a['median_ttft_s'] / max(b['median_ttft_s'], 1e-9):.2f}")
EOF
say "gpu_check done"
sleep 1
