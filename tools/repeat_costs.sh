#!/usr/bin/env bash
# Counts, under callgrind, the instructions per run of each model in tools/repeat_costs.pyx:
# the figures docs/design.md's "Repeats kept on purpose" quotes. Each model runs 10,000 and
# 20,000 times; the difference over 10,000 is its cost per run, set-up and start-up cancelled.
#   tools/repeat_costs.sh [python]     (a python with Cython and setuptools; valgrind on PATH)
set -euo pipefail
PYTHON=${1:-python}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cp "$HERE/repeat_costs.pyx" "$WORK/"
cd "$WORK"
"$PYTHON" -c "from Cython.Build import cythonize; from setuptools import setup; \
setup(ext_modules=cythonize('repeat_costs.pyx', quiet=True), script_args=['build_ext', '--inplace', '-q'])" \
    >/dev/null
count() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$PYTHON" -c \
        "import repeat_costs; repeat_costs.run('$1', $2)" 2>&1 | awk '/refs:/ {gsub(",", "", $NF); print $NF}'
}
for model in tail_inline tail_shared rule_inline rule_in_python; do
    small=$(count "$model" 10000)
    large=$(count "$model" 20000)
    echo "$model: $(((large - small) / 10000)) instructions per run"
done
