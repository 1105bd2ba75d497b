#!/usr/bin/env bash
# Installs all-MiniLM-L6-v2 into Alluvium's model cache: `models/install.sh all-MiniLM-L6-v2`.
#
#   models/install-minilm.sh [TARGET_DIR]     # default: ${ALLUVIUM_MODEL_CACHE:-~/.cache/alluvium/models}/all-MiniLM-L6-v2
exec "$(dirname "$0")/install.sh" all-MiniLM-L6-v2 "$@"
