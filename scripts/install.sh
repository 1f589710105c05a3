#!/usr/bin/env bash
# Set-up for a fresh machine: bubblewrap (the sandbox) and janus-git with its model backend
# and test extras.  Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

# ssh-keygen signs the agent's commits and checks approvers' SSH signatures
if ! command -v ssh-keygen >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq openssh-client
  else
    echo "install openssh-client (ssh-keygen): the agent signs its commits with it" >&2
  fi
fi

if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq bubblewrap
  else
    echo "install bubblewrap (e.g. sudo apt-get install bubblewrap) for the full sandbox;" \
         "without it janus-git runs tools with the reduced, resource-limited isolation" >&2
  fi
fi

# llama-cpp-python builds from source where no wheel exists; these flags halve the build and
# keep it portable (pip caches the wheel, so the next install takes seconds).
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF}"
# compat mode: a plain path entry instead of an import hook (~20 ms off every command)
python3 -m pip install -q -e '.[llm,test]' --config-settings editable_mode=compat
