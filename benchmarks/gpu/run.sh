#!/usr/bin/env bash
# The one-GPU check as ONE command on a CUDA machine with torch (and Transformer Engine for the TE
# parts). See benchmarks/gpu/README.md for what the machine needs.
#
#   bash benchmarks/gpu/run.sh [--te DIR] [--budget SECONDS] [--cpu-smoke]
#
# --te DIR     install Transformer Engine from the wheel(s) in DIR first, for a machine without network
#              (a wheel split into part0* pieces is joined first); wheels in .whl/ go to /tmp/site
# --budget S   end everything within S seconds (default 420, 7 minutes: the budget table in README.md;
#              1200 with --cpu-smoke)
# --cpu-smoke  the same steps on the CPU with tiny shapes and a short test list (checks this script);
#              the tests/gpu checks run with SOLO_GPU_CHECKS=cpu-smoke
#
# Parts, most telling first, each under its own time limit cut to what the budget has left:
#   pytest_checks_te         tests/gpu/test_te_equivalence.py, test_te_roundtrip.py, test_host_syncs.py: TE vs
#                            local on imported weights, pack vs alone, window; HF -> TE -> local -> HF; no host
#                            sync in the TE step
#   pytest_te                the multi-process-free suite with TE importable (auto = TE spec for bf16)
#   pytest_checks_fp8        tests/gpu/test_fp8.py: FP8 vs bf16 loss curves, FP8 checkpoint resume
#   speed                    gpu_checks.py: speed at solo-7b width: local bf16, TE bf16, TE FP8, transformers peer
#   pytest_local             the model/training/checkpoint tests again with SOLO_TRANSFORMER_IMPL=local
#   pytest_checks_attention  tests/gpu/test_packed_attention.py: the local spec's GPU attention paths
# The tests/gpu checks record their figures in $OUT/parts/checks (SOLO_GPU_RESULTS) as they go; the speed
# table, the environment and the timeline sit beside them, and the report is rewritten after every part,
# so whatever ends the run (a time limit, the machine going away) leaves a complete report of what ran.
# Writes to $OUT (default ./gpu_out): log.txt, PART.txt of each pytest part, parts/, gpu_results.json, results.md.
set -u -o pipefail
OUT=${OUT:-$PWD/gpu_out}; mkdir -p "$OUT"
TE_DIR=""; BUDGET=""; SMOKE=0
while (($#)); do
  case "$1" in
    --te) TE_DIR=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --cpu-smoke) SMOKE=1; shift ;;
    *) echo "usage: run.sh [--te DIR] [--budget SECONDS] [--cpu-smoke]" >&2; exit 2 ;;
  esac
done
# 7 minutes on the GPU; the smoke run's tiny shapes take longer than that on a small CPU
BUDGET=${BUDGET:-$((SMOKE ? 1200 : 420))}
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/solo_gpu_check.XXXXXX")  # transient: build log, per-run speed files
PARTS=$OUT/parts  # what the report reads; this run's alone (an older run's records would mix in)
rm -rf "$PARTS"; mkdir -p "$PARTS/checks"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
REPORT_FLAGS=(); ((SMOKE)) && REPORT_FLAGS=(--smoke)

# report: rewrite gpu_results.json and results.md in $OUT from what the parts have left so far
report() { python3 benchmarks/gpu/report.py --parts "$PARTS" --out "$OUT" --quiet "${REPORT_FLAGS[@]}" || echo "report failed"; }

# limit SECONDS: SECONDS cut to the budget left less the reserve (what part NAME SECONDS will use)
RESERVE=5  # for the last report; each part's report is written as it ends
KILL_AFTER=5  # seconds between timeout's TERM and its KILL
limit() {
  local want=$1 left=$((BUDGET - RESERVE - KILL_AFTER - SECONDS))
  ((left < want)) && want=$left
  echo "$want"
}
# part NAME SECONDS CMD...: run CMD under limit SECONDS, log its exit code, rewrite the report
part() {
  local name=$1 want; want=$(limit "$2"); shift 2
  if ((want < 10)); then
    echo "== $name: skipped, budget spent"; echo "$name skipped budget" >> "$PARTS/timeline.txt"; report; return
  fi
  local start=$SECONDS
  echo "== $name (limit ${want}s, at ${SECONDS}s)"
  timeout --kill-after=$KILL_AFTER "$want" "$@"
  local rc=$?
  echo "== $name: exit $rc at ${SECONDS}s"
  echo "$name exit=$rc start_s=$start end_s=$SECONDS limit_s=$want" >> "$PARTS/timeline.txt"
  report
}

if ((SMOKE)); then
  export PYTHONPATH=$PWD SOLO_GPU_CHECKS=cpu-smoke
  TESTS=(tests/model/test_specs.py tests/model/test_thd.py)
  LOCAL_TESTS=(tests/model/test_specs.py)
  SMOKE_FLAG=(--cpu-smoke)
  LIMITS=(300 200 200 200 200 100)
else
  if [[ -n "$TE_DIR" ]]; then
    (cd "$TE_DIR" && { ! ls part0* >/dev/null 2>&1 || { cat part0* > transformer_engine_cu13-2.11.0-py3-none-manylinux_2_28_x86_64.whl && rm part0*; }; } \
      && python3 -m pip install -q --no-index --no-deps ./*.whl) || echo "TE install failed"
  fi
  if [[ -d .whl ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || echo "wheel install failed"
  fi
  export PYTHONPATH=/tmp/site:$PWD
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 setup.py build_ext --inplace > "$SCRATCH/build.log" 2>&1 || { echo "csrc build failed:"; tail -20 "$SCRATCH/build.log"; }
  TESTS=(tests)
  LOCAL_TESTS=(tests/model/test_solo_model.py tests/model/test_thd.py tests/model/test_specs.py tests/training/test_loop.py
               tests/hf/test_convert_errors.py tests/hf/test_real_weights.py)
  SMOKE_FLAG=()
  # checks_te pytest_te checks_fp8 speed local attention: 385 s + ~30 s set-up (README.md's budget table)
  LIMITS=(80 60 60 150 20 15)
fi
python3 - "$PARTS/environment.json" <<'EOF'
import json, sys, torch
from importlib.metadata import PackageNotFoundError, version
def v(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return None
env = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
       "cuda": torch.version.cuda, "transformer_engine": v("transformer-engine"), "megatron_core": v("megatron-core"),
       "transformers": v("transformers")}
try:
    import transformer_engine.pytorch  # noqa: F401
    env["te_import"] = "ok"
except Exception as exc:
    env["te_import"] = f"{type(exc).__name__}: {exc}"[:300]
print(env)
json.dump(env, open(sys.argv[1], "w"))
EOF

report  # the environment, before any part
export SOLO_GPU_RESULTS=$PARTS/checks
# tests NAME SECONDS ARGS...: pytest ARGS as part NAME, its log in $OUT/NAME.txt (tail shown)
tests() {
  local name=$1 limit=$2; shift 2
  part "$name" "$limit" bash -c "$(printf '%q ' python3 -m pytest -q -p no:warnings -p no:cacheprovider -rfEs "$@") \
    > $OUT/$name.txt 2>&1"
  tail -n 15 "$OUT/$name.txt" 2>/dev/null
}
SUITE=(-m "not multiprocess and not gpu")  # the checks in tests/gpu run in their own parts
# TE names the attention backend it picks (tee-sys: its log line reaches the part's log, test passed or not)
NVTE_DEBUG=1 NVTE_DEBUG_LEVEL=1 tests pytest_checks_te "${LIMITS[0]}" --capture=tee-sys \
  tests/gpu/test_te_equivalence.py tests/gpu/test_te_roundtrip.py tests/gpu/test_host_syncs.py
tests pytest_te "${LIMITS[1]}" "${SUITE[@]}" "${TESTS[@]}"
tests pytest_checks_fp8 "${LIMITS[2]}" tests/gpu/test_fp8.py
SPEED_LIMIT=$(limit "${LIMITS[3]}")  # what part will give it: its own deadline ends every timing before that
part speed "$SPEED_LIMIT" python3 benchmarks/gpu/gpu_checks.py "${SMOKE_FLAG[@]}" \
  --out "$PARTS/speed.json" --scratch "$SCRATCH/speed_runs" --deadline $((SPEED_LIMIT - 10)) \
  $( ((SMOKE)) && echo "--microbatches 2" )
SOLO_TRANSFORMER_IMPL=local tests pytest_local "${LIMITS[4]}" "${SUITE[@]}" "${LOCAL_TESTS[@]}"
tests pytest_checks_attention "${LIMITS[5]}" tests/gpu/test_packed_attention.py
python3 benchmarks/gpu/report.py --parts "$PARTS" --out "$OUT" "${REPORT_FLAGS[@]}"
echo "== done at ${SECONDS}s"
