#!/usr/bin/env bash
# LLaMA-Factory in its own virtual environment, for the optional peer side of bench/throughput.py.
#
#     bash bench/setup_llamafactory.sh                 # creates /work/venvs/llamafactory (or $LLAMAFACTORY_VENV)
#     python bench/throughput.py                       # finds it there and adds the llamafactory side
#
# Why a separate venv: llamafactory pins its own transformers/peft/trl/datasets ranges, which differ from lorakit's;
# sharing one environment would change what lorakit is measured with. torch is installed first, from the same wheel
# lorakit uses (CPU build on a CPU machine), so pip does not pull a CUDA build of torch for llamafactory's
# `torch>=...` requirement and both sides run the same kernels.
#
# Idempotent: an existing venv with llamafactory importable is left as it is (pass --force to rebuild it).
# What pip installed is written to $VENV/installed.txt (pip freeze) so a bench report can quote the versions.
set -euo pipefail

VENV="${LLAMAFACTORY_VENV:-/work/venvs/llamafactory}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
LLAMAFACTORY_SPEC="${LLAMAFACTORY_SPEC:-llamafactory==0.9.5}"
PYTHON="${PYTHON:-python3}"

if [[ "${1:-}" == "--force" ]]; then
    rm -rf "$VENV"
fi

if [[ -x "$VENV/bin/llamafactory-cli" ]] && "$VENV/bin/python" -c "from llamafactory.train.tuner import run_exp" \
        >/dev/null 2>&1; then
    echo "llamafactory already installed in $VENV ($("$VENV/bin/python" -c 'import llamafactory; print(llamafactory.__version__)'))"
    exit 0
fi

mkdir -p "$(dirname "$VENV")"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --upgrade pip
"$VENV/bin/pip" install "$TORCH_SPEC"
# Hold torch at the build just installed: without this, llamafactory's unpinned torchvision pulls the newest
# torchvision, which pins a newer torch, and pip swaps the CPU build for a CUDA one (seen with 0.9.5: torch 2.14.1
# plus ~5 GB of nvidia-* wheels, different kernels from lorakit's side).
"$VENV/bin/python" -c 'import torch; print(f"torch=={torch.__version__}")' > "$VENV/constraints.txt"
"$VENV/bin/pip" install "$LLAMAFACTORY_SPEC" -c "$VENV/constraints.txt"
# The torchvision and torchaudio that pip picks are CUDA builds or built for another torch: against the CPU torch
# their C++ libraries do not load, and transformers (which imports torchvision when present) then fails to import.
# Text-only training needs neither. torchvision is removed. torchaudio cannot simply go: LLaMA-Factory imports it at
# module level (llamafactory/data/mm_plugin.py), and no torchaudio wheel on the index (newest 2.11.1) loads against
# torch 2.13, so it is replaced by a placeholder module whose every attribute raises ImportError.
if ! "$VENV/bin/python" -c 'import torch, torchvision; torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)' \
        >/dev/null 2>&1; then
    echo "torchvision does not load against this torch; removing it"
    "$VENV/bin/pip" uninstall -y torchvision
fi
if ! "$VENV/bin/python" -c 'import torchaudio' >/dev/null 2>&1; then
    echo "torchaudio does not load against this torch; replacing it with a placeholder"
    "$VENV/bin/pip" uninstall -y torchaudio
    SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    mkdir -p "$SITE/torchaudio"
    cat > "$SITE/torchaudio/__init__.py" <<'PY'
"""Placeholder for torchaudio, written by lorakit's bench/setup_llamafactory.sh.

No torchaudio wheel loads against this venv's CPU torch, yet LLaMA-Factory imports torchaudio at module level.
Text-only training never calls it; any use fails here.
"""


def __getattr__(name):
    raise ImportError(f"torchaudio.{name}: torchaudio is a placeholder in this venv (see bench/setup_llamafactory.sh)")
PY
fi
"$VENV/bin/python" -c 'from llamafactory.train.tuner import run_exp' # fails here, not in the bench, if still broken
"$VENV/bin/pip" freeze > "$VENV/installed.txt"
echo "installed $("$VENV/bin/python" -c 'import llamafactory; print(llamafactory.__version__)') in $VENV; versions in $VENV/installed.txt"
