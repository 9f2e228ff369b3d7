#!/usr/bin/env bash
# Fill .whl/ with the Python 3.12 / x86-64 wheels that a GPU machine's image lacks for `make gpu-check`:
# importing mfnb, running its notebooks through papermill on the `paper` profile (pydantic, papermill and a
# python3 Jupyter kernel), TRL training, a DeepSpeed ZeRO-2 launch and the `openai` client.
#
#   tools/build_wheelhouse.sh          # download (PyPI) and build into .whl/, print the size; fails over the limit
#   tools/build_wheelhouse.sh --list   # only print the NAME==VERSION list it would fetch (no network)
#
# The GPU image (Python 3.12.3, torch 2.11.0+cu130, transformers 5.17.0, huggingface_hub 1.33, tokenizers 0.23.2,
# accelerate 1.15.0, peft, pandas, pyarrow, numpy, ...; no network) is taken as it is except for the Hugging Face
# stack: mfnb passes `activation_checkpointing` to TRL's DPOConfig, which transformers 5.17's TrainingArguments
# does not know (it has only `gradient_checkpointing`), so the versions this project's CI runs travel instead:
# transformers 5.25 (which needs huggingface_hub >= 2.4, hence tokenizers 0.23.3, kernels, httpx2), accelerate
# and peft. Every other pin is the version in this checkout's .venv (what CI tests), one version of each.
# Requirements the image itself is trusted to meet (versions unknown here): pyarrow >= 24 (datasets), anyio >= 4.10
# (openai, httpx2), attrs >= 22.2, pandas >= 2.1.1, psutil >= 5.9.4, packaging >= 22, h11 >= 0.16, click >= 8.4.2,
# hf-xet >= 1.6,<2, python-dateutil, requests, aiohttp, jinja2, einops, msgpack, ninja, py-cpuinfo, xxhash,
# safetensors >= 0.8, regex, typer, tqdm, pyyaml, numpy, torch; tools/gpu_check.sh checks them all there.
#
# The wheels travel with the working tree (64 MiB in all, this folder included) and are installed there with
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
# (tools/gpu_check.sh does it). .whl/ must be git-ignored: /.whl/ in .git/info/exclude.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${WHEELHOUSE_DIR:-$ROOT/.whl}"
LIMIT_MIB="${WHEELHOUSE_LIMIT_MIB:-48}"
PYVER="${WHEELHOUSE_PYTHON_VERSION:-3.12}"   # the GPU image's python3 (another only to rehearse this script)
CP="cp${PYVER/./}"
DEEPSPEED="deepspeed==0.19.8"   # sdist only on PyPI: built here as a pure wheel (DS_BUILD_OPS=0, ops JIT-built there)

PACKAGES=(
  # the Hugging Face stack mfnb needs (the image's is older: see above)
  transformers==5.25.0
  huggingface_hub==2.4.0
  tokenizers==0.23.3
  kernels==0.19.1
  tomlkit==0.15.3
  httpx2==2.17.0
  httpcore2==2.17.0
  truststore==0.10.5
  idna==3.21
  accelerate==1.16.0
  peft==0.21.2
  # TRL and datasets (datasets 5.2 caps fsspec at 2026.9.0)
  trl==1.16.0
  datasets==5.2.0
  dill==0.4.1
  multiprocess==0.70.19
  fsspec==2026.9.0
  # pydantic (mfnb.core.params needs >= 2.12; pydantic needs typing_extensions >= 4.16)
  pydantic==2.14.4
  pydantic_core==2.50.5
  annotated-types==0.8.0
  typing-inspection==0.4.5
  typing_extensions==4.16.0
  # papermill and a python3 kernel (ipykernel). Not ipywidgets (2.5 MiB with its two extensions): without it
  # tqdm draws text bars in the kernel (mfnb.core.progress falls back to them), and the tree keeps its headroom
  papermill==2.7.0
  entrypoints==0.4.2
  tenacity==9.2.1
  nbclient==0.11.0
  nbformat==5.11.1
  fastjsonschema==2.22.3
  jsonschema==4.26.0
  jsonschema-specifications==2025.9.1
  referencing==0.37.0
  rpds-py==2026.9.1
  jupyter_client==8.10.0
  jupyter_core==5.9.1
  platformdirs==4.14.9
  traitlets==5.16.1
  pyzmq==27.3.0
  tornado==6.6.1
  ipykernel==7.4.0
  comm==0.2.3
  debugpy==1.8.22
  nest-asyncio2==1.7.4
  matplotlib-inline==0.2.2
  ipython==9.19.1
  ipython-pygments-lexers==1.1.1
  jedi==0.20.1
  parso==0.8.7
  pexpect==4.9.0
  ptyprocess==0.7.0
  prompt_toolkit==3.0.53
  wcwidth==0.9.5
  stack_data==0.6.3
  executing==2.3.0
  asttokens==3.0.2
  pure_eval==0.2.4
  # the OpenAI-compatible judge
  openai==3.63.0
  jiter==0.19.0
  sniffio==1.3.1
  # DeepSpeed's own needs the image lacks (built wheel: see DEEPSPEED)
  hjson==3.1.0
)

if [[ "${1:-}" == "--list" ]]; then
  printf '%s\n' "${PACKAGES[@]}" "$DEEPSPEED"
  exit 0
elif [[ $# -gt 0 ]]; then
  echo "usage: $0 [--list]" >&2
  exit 2
fi

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
# torch must be importable by $PY: DeepSpeed's setup.py imports it (no build isolation, so no torch download)
"$PY" -c "import torch" 2>/dev/null || { echo "error: $PY cannot import torch (needed to build the DeepSpeed wheel); run make venv first or set PYTHON" >&2; exit 1; }

# a fresh folder: exactly one version of each package, nothing left from an older list
mkdir -p "$DEST"
rm -f "$DEST"/*.whl

PLATFORMS=()
for p in manylinux_2_39_x86_64 manylinux_2_35_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64 \
         manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_26_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_12_x86_64 manylinux2010_x86_64 \
         manylinux_2_5_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done

echo "== downloading ${#PACKAGES[@]} wheels for CPython $PYVER, x86-64 into $DEST"
# (this machine's pip config names local indexes; its "Location ... is ignored" lines are noise)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp --abi "$CP" \
  --abi abi3 --abi none "${PLATFORMS[@]}" -d "$DEST" "${PACKAGES[@]}" 2> >(grep -v "^WARNING: Location '" >&2)

echo "== building $DEEPSPEED as a pure wheel (DS_BUILD_OPS=0: its ops are JIT-built where they run)"
BUILD="$(mktemp -d)"
trap 'rm -rf "$BUILD"' EXIT
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation --no-binary deepspeed -w "$BUILD" "$DEEPSPEED" \
  2> >(grep -v "^WARNING: Location '" >&2)
cp "$BUILD"/deepspeed-*.whl "$DEST"/

# exactly one wheel per listed package, each for this CPython (or any Python 3) on x86-64 Linux
"$PY" - "$DEST" "$CP" "${PACKAGES[@]}" "$DEEPSPEED" <<'EOF'
import re, sys
from pathlib import Path

dest, cp, wanted = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
norm = lambda s: re.sub(r"[-_.]+", "_", s).lower()
found = {}
for whl in sorted(dest.glob("*.whl")):
    name, version = whl.name.split("-")[:2]
    found.setdefault(norm(name), []).append((version, whl.name))
problems = [f"{n}: {len(v)} wheels {[w for _, w in v]}" for n, v in found.items() if len(v) > 1]
for spec in wanted:
    name, version = spec.split("==")
    got = found.get(norm(name))
    if not got:
        problems.append(f"{spec}: no wheel")
    elif got[0][0] != version:
        problems.append(f"{spec}: got {got[0][1]}")
extra = set(found) - {norm(s.split("==")[0]) for s in wanted}
problems += [f"unexpected wheel {found[n][0][1]}" for n in sorted(extra)]
for whl in dest.glob("*.whl"):
    tags = whl.name[:-4].split("-")[-3:]
    if not (tags[0] in ("py3", "py2.py3", cp, "py" + cp[2:]) or tags[0].startswith("cp3") and tags[1] == "abi3"):
        problems.append(f"{whl.name}: not for {cp}")
    if tags[2] != "any" and "x86_64" not in tags[2]:
        problems.append(f"{whl.name}: not for x86-64 Linux")
if problems:
    sys.exit("wheelhouse check failed:\n  " + "\n  ".join(problems))
print(f"{len(found)} wheels, one version each")
EOF

bytes=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
mib=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
echo "== largest wheels"
# shellcheck disable=SC2012  # wheel names are plain
ls -S -s --block-size=K "$DEST" | sed -n '2,9p'
WHEELS=("$DEST"/*.whl)
tree=""
if [[ "$DEST" -ef "$ROOT/.whl" ]] && git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
  # what travels to a GPU machine: tracked and untracked-but-not-ignored files, plus the carried .whl/
  files=$(cd "$ROOT" && git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
  tree=$(awk -v a="$files" -v b="$bytes" 'BEGIN { printf " (working tree with it: %.1f MiB of the 64 MiB that travel)", (a + b) / 1048576 }')
fi
echo "wheelhouse: ${#WHEELS[@]} wheels, $mib MiB in $DEST$tree"
if awk -v m="$mib" -v l="$LIMIT_MIB" 'BEGIN { exit !(m > l) }'; then
  echo "error: the wheelhouse is $mib MiB, over the $LIMIT_MIB MiB limit (WHEELHOUSE_LIMIT_MIB)" >&2
  exit 1
fi
if [[ "$DEST" -ef "$ROOT/.whl" ]] && git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1 \
   && ! git -C "$ROOT" check-ignore -q "$DEST/x.whl" 2>/dev/null; then
  echo "warning: $DEST is not git-ignored; add /.whl/ to .git/info/exclude so it travels only when carried" >&2
fi
