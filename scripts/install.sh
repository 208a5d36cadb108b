#!/usr/bin/env bash
# Install Clarion and its pinned dependencies into a Python environment.
# Used by scripts/dev.sh (and so by CI) and by every Dockerfile, so the images install exactly
# what CI tested.
#
#   scripts/install.sh [--dev] [--editable] [--no-project] [--slim]
#
# --slim (images): afterwards drop torch's C++ headers, its test suite and its test binaries (about
#   200 MB that serving never touches; tests/test_images.py imports every module in the built image).
#
# PYTHON   the interpreter to install into (default: python3)
# TORCH    the torch requirement (default: torch==2.13.0). torch goes in first and alone: a torch
#          requirement pulled in by another package would fetch gigabytes of CUDA wheels on Linux.
#          For a CUDA image pass e.g. TORCH="torch==2.13.0" with a CUDA index in PIP_EXTRA_INDEX_URL.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
torch_requirement=${TORCH:-torch==2.13.0}
requirements=requirements/runtime.txt
project=yes
editable=
slim=
for arg in "$@"; do
  case "$arg" in
    --dev) requirements=requirements/dev.txt ;;
    --editable) editable=-e ;;
    --no-project) project= ;;
    --slim) slim=yes ;;
    *) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

pip_install() { "$python" -m pip install --disable-pip-version-check --no-input "$@"; }

if ! "$python" -c "import torch" 2>/dev/null; then
  # Constrained by the lock: the packages torch pulls in (filelock, sympy, setuptools, ...) get the
  # pinned versions now, instead of the newest and then a downgrade.
  pip_install "$torch_requirement" -c requirements/runtime.txt
fi
pip_install -r "$requirements"
if [ -n "$project" ]; then
  # --no-deps: everything is pinned above; this only installs Clarion's own packages and scripts,
  # and the clarion-client distribution its command line talks to servers with (client/).
  pip_install --no-deps $editable . $editable ./client
fi
if [ -n "$slim" ]; then
  site=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')
  rm -rf "$site/torch/include" "$site/torch/test"
  # torch/bin: test binaries and protoc, but `import torch` checks that torch_shm_manager is there.
  find "$site/torch/bin" -type f ! -name torch_shm_manager -delete
fi
