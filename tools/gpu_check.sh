#!/usr/bin/env bash
# `make gpu-check`: the `paper` profile's code path on a CUDA machine, in one command of under 10 minutes.
#
# On a GPU machine with no network (the image has torch, transformers, pandas, ... but not TRL, datasets, pydantic,
# papermill's kernel, openai or DeepSpeed), from the repository root:
#   tools/build_wheelhouse.sh   # HERE, once, with network: the missing wheels into .whl/ (git-ignored; carry it)
#   make gpu-check              # THERE (or: bash tools/gpu_check.sh)
#
# What it does, in order; each part's output goes to the terminal and, when $OUT is set, to a file in $OUT:
#   setup     (00_gpu_check.log) installs .whl/*.whl into $GPU_CHECK_SITE (/tmp/site) unless the packages already
#             import, checks the carried packages' requirements against what is installed, registers a python3
#             Jupyter kernelspec if none is found and runs one cell in it, prints nvidia-smi, torch, CUDA and
#             the library versions (and, at the end, the summary);
#   rehearse  (01_rehearse.log)      python3 -m mfnb rehearse --device cuda --processes 1 --judge stub
#             (and its results/rehearsal/summary.csv as rehearsal_summary.csv)
#   tests     (02_device_tests.log)  python3 -m pytest -q -m "not slow" tests/*/test_device_*.py
#   scale     (03_gpu_scale.log)     python3 benchmarks/gpu_scale.py (also writes gpu_scale.csv / .json to $OUT)
# Each part runs under `timeout` within a total budget; a part that fails or times out does not stop the others;
# the exit status is 1 if any part (or the setup) failed.
#
# Settings (environment): GPU_CHECK_PARTS (default rehearse,tests,scale), GPU_CHECK_BUDGET_S (total seconds,
# default 540, the setup included), GPU_CHECK_REHEARSE_S / GPU_CHECK_TESTS_S / GPU_CHECK_SCALE_S (caps: 240 / 60 / 180),
# GPU_CHECK_PYTHON (python3), GPU_CHECK_SITE (/tmp/site), GPU_CHECK_WHEELS (.whl), GPU_CHECK_SCALE_ARGS (extra
# gpu_scale.py arguments, e.g. "--parts dpo --grad-accum 1").
set -uo pipefail   # no -e: one part's failure must not stop the others

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
PY="${GPU_CHECK_PYTHON:-python3}"
SITE="${GPU_CHECK_SITE:-/tmp/site}"
WHEELS_DIR="${GPU_CHECK_WHEELS:-$ROOT/.whl}"
BUDGET="${GPU_CHECK_BUDGET_S:-540}"
PARTS=",${GPU_CHECK_PARTS:-rehearse,tests,scale},"
declare -A CAP=([rehearse]="${GPU_CHECK_REHEARSE_S:-240}" [tests]="${GPU_CHECK_TESTS_S:-60}"
                [scale]="${GPU_CHECK_SCALE_S:-180}")
START=$SECONDS
STARTED_AT=$(date +%s)

# no network there: never let a library wait on the hub
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 \
       TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"   # mfnb from this checkout, in papermill's kernels too

LOGS=""
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT" && LOGS="$OUT"
fi

SUMMARY=()
FAILED=0

note() { printf '%s\n' "$*"; }
elapsed() { echo $((SECONDS - START)); }

# ---------------------------------------------------------------------------------------------------- setup
PROBE='
import importlib.util, sys
missing = [name for name in ("torch", "transformers", "trl", "datasets", "peft", "accelerate", "pydantic", "papermill",
                             "nbclient", "ipykernel", "openai", "deepspeed", "yaml", "pandas", "scipy", "seaborn")
           if importlib.util.find_spec(name) is None]
if "transformers" not in missing and "torch" not in missing:
    import transformers
    from transformers import TrainingArguments
    if "activation_checkpointing" not in TrainingArguments.__dataclass_fields__:
        missing.append(f"transformers {transformers.__version__} (too old: mfnb passes activation_checkpointing)")
print("; ".join(missing) if missing else "ok")
sys.exit(1 if missing else 0)
'

REQUIREMENTS='
import importlib.metadata as md, sys
from pathlib import Path
from packaging.requirements import Requirement
from packaging.version import Version

site = Path(sys.argv[1]).resolve()
carried = [d for d in md.distributions() if Path(str(d.locate_file(""))).resolve() == site]
problems = []
for dist in carried:
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        who = dist.metadata["Name"]
        try:
            have = md.version(req.name)
        except md.PackageNotFoundError:
            problems.append(f"{who} needs {req}: not installed")
            continue
        if req.specifier and not req.specifier.contains(Version(have), prereleases=True):
            problems.append(f"{who} needs {req}: found {have}")
print(f"requirements of the {len(carried)} packages in {site}: " + ("all met" if not problems else f"{len(problems)} unmet"))
for p in problems:
    print("  UNMET", p)
sys.exit(1 if problems else 0)
'

VERSIONS='
import importlib, platform, sys, torch
print(f"python {platform.python_version()} ({sys.executable})")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
      f"CUDA available: {torch.cuda.is_available()}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.1f} GiB, sm {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
          f"bf16 {torch.cuda.is_bf16_supported()}")
missing = 0
for name in ("transformers", "trl", "peft", "accelerate", "datasets", "huggingface_hub", "tokenizers", "deepspeed",
             "pydantic", "papermill", "ipykernel", "openai", "mfnb", "mfnb.cli", "mfnb.training.dpo", "mfnb.worlds.paper.world"):
    try:
        m = importlib.import_module(name)
        version = getattr(m, "__version__", "")
        print(f"  {name:18s} {version:12s} {m.__file__}")
    except Exception as err:
        missing += 1
        print(f"  {name:18s} CANNOT IMPORT ({type(err).__name__}: {err})")
sys.exit(1 if missing else 0)
'

KERNEL_SMOKE='
import nbformat, sys
from nbclient import NotebookClient
from jupyter_client.kernelspec import KernelSpecManager

spec = KernelSpecManager().get_kernel_spec("python3")
print(f"python3 kernel: {spec.argv[0]} ({spec.resource_dir})")
nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
    "import sys, torch, mfnb, mfnb.cli\n"
    "print(sys.executable, torch.__version__, torch.cuda.is_available(), mfnb.__file__)")])
NotebookClient(nb, kernel_name="python3", timeout=120, startup_timeout=120).execute()
out = "".join(o.get("text", "") for o in nb.cells[0].outputs)
print("a cell in that kernel printed:", out.strip())
'

setup() {
  note "# gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname) ($(uname -srm)); budget ${BUDGET}s; parts ${PARTS:1:-1}"
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi
  else
    note "nvidia-smi: not found"
  fi

  note "== packages"
  local status=0 probe
  if probe=$("$PY" -c "$PROBE" 2>/dev/null); then
    note "the image's packages suffice (no wheels installed)"
  else
    note "missing or too old without the wheelhouse: $probe"
    shopt -s nullglob
    local wheels=("$WHEELS_DIR"/*.whl)
    shopt -u nullglob
    if (( ${#wheels[@]} == 0 )); then
      note "ERROR: no wheels in $WHEELS_DIR: run tools/build_wheelhouse.sh on a machine with network and carry .whl"
      status=1
    else
      local stamp
      stamp=$(stat -c '%s %n' "${wheels[@]}" | sha256sum | cut -c1-16)
      if [[ -f "$SITE/.gpu-check-wheels" && "$(cat "$SITE/.gpu-check-wheels")" == "$stamp" ]]; then
        note "the ${#wheels[@]} wheels of $WHEELS_DIR are already installed in $SITE"
      else
        note "installing ${#wheels[@]} wheels from $WHEELS_DIR into $SITE"
        local t0=$SECONDS
        if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
             "${wheels[@]}"; then
          echo "$stamp" > "$SITE/.gpu-check-wheels"
          note "installed in $((SECONDS - t0)) s"
        else
          note "ERROR: pip install of $WHEELS_DIR failed"
          status=1
        fi
      fi
      export PYTHONPATH="$SITE:$PYTHONPATH"
      if probe=$("$PY" -c "$PROBE" 2>&1); then
        note "with $SITE: every package is found"
      else
        note "ERROR: still missing with $SITE: $probe"
        status=1
      fi
      "$PY" -c "$REQUIREMENTS" "$SITE" || note "(unmet requirements above: the parts may still run; their logs say)"
    fi
  fi

  note "== versions"
  "$PY" -c "$VERSIONS" || status=1

  note "== Jupyter kernel for papermill"
  if "$PY" -c "from jupyter_client.kernelspec import KernelSpecManager as K; import sys; sys.exit('python3' not in K().find_kernel_specs())" 2>/dev/null; then
    note "a python3 kernelspec is found"
  else
    note "no python3 kernelspec: registering one for $PY"
    "$PY" -m ipykernel install --user --name python3 --display-name "Python 3" || status=1
  fi
  timeout 150 "$PY" -c "$KERNEL_SMOKE" 2>&1 || { note "ERROR: the python3 kernel did not run a cell"; status=1; }
  note "setup took $(elapsed) s"
  return $status
}

# ---------------------------------------------------------------------------------------------------- parts
# run_part NAME LOGFILE COMMAND...: under `timeout` (the part's cap, or what the budget has left), tee'd to $OUT
run_part() {
  local name=$1 log=$2
  shift 2
  if [[ "$PARTS" != *",$name,"* ]]; then
    return
  fi
  local left=$((BUDGET - $(elapsed)))
  local limit=${CAP[$name]}
  (( limit > left - 5 )) && limit=$((left - 5))
  if (( limit < 20 )); then
    note "== [$name] skipped: the ${BUDGET}s budget is spent"
    SUMMARY+=("$name|skipped (budget)|0|-")
    FAILED=1
    return
  fi
  note ""
  note "== [$name] $* (timeout ${limit}s, $(elapsed) s into the check)"
  local t0=$SECONDS rc
  if [[ -n "$LOGS" ]]; then
    timeout --kill-after=15 "$limit" "$@" 2>&1 | tee "$LOGS/$log"
    rc=${PIPESTATUS[0]}
  else
    timeout --kill-after=15 "$limit" "$@" 2>&1
    rc=$?
  fi
  local secs=$((SECONDS - t0)) status
  case $rc in
    0) status="ok" ;;
    124|137) status="TIMED OUT after ${limit}s" ;;
    *) status="FAILED (exit $rc)" ;;
  esac
  [[ $rc -ne 0 ]] && FAILED=1
  note "== [$name] $status in ${secs} s"
  if [[ $rc -eq 124 || $rc -eq 137 ]] && command -v nvidia-smi >/dev/null 2>&1; then
    sleep 3  # what the timed-out part left on the GPU (a papermill kernel outlives its parent briefly)
    nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader 2>/dev/null | sed 's/^/   still on the GPU: /'
  fi
  SUMMARY+=("$name|$status|$secs|${LOGS:+$LOGS/}$log")
}

# shellcheck disable=SC2317  # run through `bash -c device_tests` (timeout needs a program)
device_tests() {
  shopt -s nullglob
  local files=(tests/*/test_device_*.py)
  shopt -u nullglob
  if (( ${#files[@]} == 0 )); then
    echo "no tests/*/test_device_*.py in this checkout: nothing to run"
    return 0
  fi
  "$PY" -m pytest -q -m "not slow" "${files[@]}"
  local rc=$?
  (( rc == 5 )) && { echo "pytest collected no test (rc 5)"; return 0; }
  return "$rc"
}

if [[ -n "$LOGS" ]]; then
  setup > >(tee "$LOGS/00_gpu_check.log") 2>&1
  SETUP_RC=$?
  wait $! 2>/dev/null
else
  setup 2>&1
  SETUP_RC=$?
fi
if (( SETUP_RC != 0 )); then
  FAILED=1
  SUMMARY+=("setup|FAILED (see above)|$(elapsed)|${LOGS:+$LOGS/}00_gpu_check.log")
else
  SUMMARY+=("setup|ok|$(elapsed)|${LOGS:+$LOGS/}00_gpu_check.log")
fi

run_part rehearse 01_rehearse.log "$PY" -m mfnb rehearse --device cuda --processes 1 --judge stub
# its summary table, when this run wrote one, comes back too
REHEARSAL_SUMMARY="$ROOT/results/rehearsal/summary.csv"
if [[ -n "$LOGS" && -f "$REHEARSAL_SUMMARY" && $(stat -c %Y "$REHEARSAL_SUMMARY") -ge $STARTED_AT ]]; then
  cp "$REHEARSAL_SUMMARY" "$LOGS/rehearsal_summary.csv"
fi
export -f device_tests
export PY
run_part tests 02_device_tests.log bash -c device_tests
# gpu_scale.py skips the rows that would start past its own budget, so its table is written before the timeout
SCALE_LEFT=$((BUDGET - $(elapsed) - 5))
(( SCALE_LEFT > CAP[scale] )) && SCALE_LEFT=${CAP[scale]}
# shellcheck disable=SC2086  # GPU_CHECK_SCALE_ARGS is a list of words
run_part scale 03_gpu_scale.log "$PY" benchmarks/gpu_scale.py --budget-s $((SCALE_LEFT > 60 ? SCALE_LEFT - 45 : 15)) \
  ${GPU_CHECK_SCALE_ARGS:-}

{
  note ""
  note "== gpu-check summary ($(elapsed) s of the ${BUDGET} s budget)"
  for line in "${SUMMARY[@]}"; do
    IFS='|' read -r name status secs log <<<"$line"
    printf '  %-9s %-30s %6s s  %s\n' "$name" "$status" "$secs" "$log"
  done
  if (( FAILED )); then note "gpu-check: FAILED"; else note "gpu-check: all parts passed"; fi
} 2>&1 | if [[ -n "$LOGS" ]]; then tee -a "$LOGS/00_gpu_check.log"; else cat; fi
exit $FAILED
