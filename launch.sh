#!/usr/bin/env bash
# tpu_train entry point. Each command creates or refreshes the virtualenv in .venv first, so on a fresh
# machine it is the only command needed.
#
#   ./launch.sh [--fresh]       the main job: the embedded default end to end (CPU, shipped data)
#   ./launch.sh roundtrip       import a random HF Llama, compare with transformers, export it back
#   ./launch.sh test [ARGS]     lint (ruff) and the test suite; ARGS go to pytest
#   ./launch.sh import  ARGS    python -m tpu_train.import_hf ARGS
#   ./launch.sh export  ARGS    python -m tpu_train.export_hf ARGS
#   ./launch.sh train   ARGS    python -m tpu_train.train ARGS
#   ./launch.sh rl [ARGS]       GRPO on the embedded default's model (runs the default first if missing)
#   ./launch.sh tpu     ARGS    train on a Cloud TPU VM slice (tpu_train/launch/tpu_vm.py; --dry_run prints)
#   ./launch.sh sweep FILE ...  run configs/sweeps/FILE's runs one after another and tabulate them
#   ./launch.sh bench           run the benchmarks and write bench/results.md
#   ./launch.sh python  ARGS    python inside the project's virtualenv
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PYTHON_BIN=${PYTHON:-python3}

# Installs the project (editable) with the given extras ("" = runtime only, "hf" = + torch, transformers,
# "test" = hf + pytest, ruff) unless this pyproject.toml was installed already with them ("test" covers
# "hf", any extras cover ""); the stamp makes repeated runs take a second.
ensure_env() {
  local extras=$1
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON_BIN" -c 'import sys; assert sys.version_info >= (3, 11), "tpu_train needs Python >= 3.11"'
    echo "[launch] creating $VENV" >&2
    "$PYTHON_BIN" -m venv "$VENV"
  fi
  local stamp="$VENV/.tpu_train-installed"
  local hash want target
  hash=$(sha256sum pyproject.toml | cut -c1-16)
  want="$hash [$extras]"
  target="."
  [ -n "$extras" ] && target=".[$extras]"
  if [ -f "$stamp" ] && { grep -qxF -- "$want" "$stamp" || { [ -z "$extras" ] && grep -q "^$hash " "$stamp"; } \
      || { [ "$extras" = hf ] && grep -qxF -- "$hash [test]" "$stamp"; }; }; then
    return
  fi
  echo "[launch] installing tpu_train${extras:+[$extras]} into $VENV (a few minutes on a fresh machine)" >&2
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e "$target"
  echo "$want" >>"$stamp"
}

export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
cmd=${1:-main}
[ $# -gt 0 ] && shift

case "$cmd" in
  main)
    # The embedded default: import SmolLM2 -> zero-shot eval -> fine-tune -> eval -> HF export (CPU).
    ensure_env hf
    exec "$VENV/bin/python" -m tpu_train.embedded "$@"
    ;;
  roundtrip)
    # Hugging Face round trip against transformers (needs the test extras).
    ensure_env test
    exec "$VENV/bin/python" -m tpu_train.interop.roundtrip "$@"
    ;;
  test)
    ensure_env test
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  import)
    ensure_env ""
    exec "$VENV/bin/python" -m tpu_train.import_hf "$@"
    ;;
  export)
    ensure_env ""
    exec "$VENV/bin/python" -m tpu_train.export_hf "$@"
    ;;
  train)
    ensure_env ""
    exec "$VENV/bin/python" -m tpu_train.train "$@"
    ;;
  rl)
    # GRPO from execution feedback on the embedded default's fine-tuned model (configs/grpo_default.py);
    # ARGS go to python -m tpu_train.rl (e.g. --config.rl.num_steps=20).
    ensure_env hf
    if [ ! -d runs/default/model/checkpoints ]; then
      echo "[launch] runs/default/model is missing: running the embedded default first" >&2
      "$VENV/bin/python" -m tpu_train.embedded
    fi
    exec "$VENV/bin/python" -m tpu_train.rl --config=configs/grpo_default.py --workdir=runs/default_rl "$@"
    ;;
  tpu)
    ensure_env ""
    exec "$VENV/bin/python" -m tpu_train.launch.tpu_vm "$@"
    ;;
  sweep)
    ensure_env ""
    exec "$VENV/bin/python" -m tpu_train.launch.sweep "$@"
    ;;
  bench)
    ensure_env test
    exec "$VENV/bin/python" bench/run_all.py "$@"
    ;;
  python)
    ensure_env ""
    exec "$VENV/bin/python" "$@"
    ;;
  *)
    echo "unknown command '$cmd'; see the top of launch.sh" >&2
    exit 2
    ;;
esac
