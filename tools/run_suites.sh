#!/usr/bin/env bash
# Runs other projects' own test suites (aiohttp, uvicorn) on cqloop and on stock asyncio, and
# prints the tests that fail on one loop and not on the other. asyncio is the oracle: a test
# that passes on asyncio and fails on cqloop is a cqloop bug unless tools/suites_accepted.txt
# lists it with its reason (a test that asserts the loop's class, a blocking-call detector that
# allows asyncio's own modules by name; see docs/suites.md). The exit status is 1 when any
# other test fails on cqloop only.
#
# It fetches no source: pass the paths of checkouts of the projects at the tags to test.
#   tools/run_suites.sh [--work DIR] [--cqloop DIR] [--only aiohttp|uvicorn] [--loops "asyncio cqloop"] \
#       aiohttp=/path/to/aiohttp-3.14.3 uvicorn=/path/to/uvicorn-0.35.0 [-- pytest args...]
# Extra pytest args (a file, -k ...) narrow every run. Each project gets its own virtualenv
# under the work dir (made once, reused), with its test requirements from the package index;
# aiohttp is the released wheel of the checkout's version (its C extensions built), the
# checkout's tests run against it. cqloop is this checkout, or the one --cqloop names (a copy
# keeps a long run off the tree being edited), built in place (`setup.py build_ext --inplace`).
# Logs and JUnit XML land in the work dir.
# Slow (aiohttp's suite runs for 10+ minutes on two cores): run it by hand, not in CI.
set -euo pipefail

TOOLS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CQLOOP_SRC="$(dirname "$TOOLS")"
WORK="${TMPDIR:-/tmp}/cqloop-suites"
PYTHON="${PYTHON:-python3.11}"
ONLY=""
LOOPS="asyncio cqloop"
declare -A SRC=()
EXTRA=()

while [ $# -gt 0 ]; do
    case "$1" in
        --work) WORK="$2"; shift 2 ;;
        --cqloop) CQLOOP_SRC="$(cd "$2" && pwd)"; shift 2 ;;
        --only) ONLY="$2"; shift 2 ;;
        --loops) LOOPS="$2"; shift 2 ;;
        aiohttp=*|uvicorn=*) SRC[${1%%=*}]="$(cd "${1#*=}" && pwd)"; shift ;;
        --) shift; EXTRA=("$@"); break ;;
        *) echo "run_suites.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
if [ ${#SRC[@]} -eq 0 ]; then
    echo "usage: $0 [--work DIR] [--cqloop DIR] [--only NAME] [--loops LIST] aiohttp=PATH uvicorn=PATH [-- pytest args]" >&2
    exit 2
fi
mkdir -p "$WORK"

make_venv() {  # name -> path of a virtualenv with cqloop importable from this checkout
    local venv="$WORK/venv-$1"
    if [ ! -x "$venv/bin/python" ]; then
        "$PYTHON" -m venv "$venv"
        "$venv/bin/pip" install -q --upgrade pip
    fi
    local site
    site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "$CQLOOP_SRC" > "$site/cqloop-checkout.pth"
    "$venv/bin/python" -c 'import cqloop._core.kernel' || {
        echo "cqloop at $CQLOOP_SRC is not built in place for $PYTHON" >&2; exit 1; }
    echo "$venv"
}

setup_aiohttp() {
    local src="$1" venv="$2" version
    version="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$src/aiohttp/__init__.py")"
    if ! "$venv/bin/python" -c "import aiohttp, sys; sys.exit(aiohttp.__version__ != '$version')" 2>/dev/null; then
        # The suite's own test requirements (CI's pins as constraints) and the released wheel.
        "$venv/bin/pip" install -q -c "$src/requirements/constraints.txt" \
            "aiohttp==$version" -r "$src/requirements/test-common.in" \
            -r "$src/requirements/test-common-base.in" -r "$src/requirements/base.in"
    fi
}

setup_uvicorn() {
    local src="$1" venv="$2"
    if ! "$venv/bin/python" -c "import uvicorn, httpx, trustme" 2>/dev/null; then
        # requirements.txt minus its docs, lint and packaging tools.
        grep -vE '^(-e|ruff|mypy|types-|build|twine|mkdocs)' "$src/requirements.txt" \
            > "$WORK/uvicorn-test-requirements.txt"
        "$venv/bin/pip" install -q -r "$WORK/uvicorn-test-requirements.txt" -e "$src[standard]"
    fi
    # uvicorn's loop="auto" installs uvloop's policy process-wide when uvloop imports, which
    # would move the rest of the run off the loop under test.
    "$venv/bin/pip" uninstall -q -y uvloop 2>/dev/null || true
}

run_one() {  # name src venv loop
    local name="$1" src="$2" venv="$3" loop="$4"
    local xml="$WORK/$name-$loop.xml" log="$WORK/$name-$loop.log"
    local -a args
    case "$name" in
        # setup.cfg's addopts minus -v/--showlocals/--durations (logs of that size help no one).
        aiohttp) args=(-o "addopts=-ra" -m "not dev_mode and not autobahn and not internal") ;;
        uvicorn) args=(-n 2) ;;
    esac
    echo "== $name on $loop (log $log)"
    # A run that ends before its report (the plugin failing to import, say) must not leave
    # the last run's report to be compared.
    rm -f "$xml" "$log"
    (cd "$src" && CQLOOP_SUITE_LOOP="$loop" PYTHONPATH="$TOOLS" \
        "$venv/bin/pytest" -p suite_loop_plugin -p no:cacheprovider -q "${args[@]}" \
        --junitxml="$xml" "${EXTRA[@]}" > "$log" 2>&1) || true
    tail -n 1 "$log"
    if ! grep -q "<testcase" "$xml" 2>/dev/null; then
        echo "$name on $loop ran no test (see $log)" >&2
        return 1
    fi
}

compare() {  # name venv: tests failing on one loop only, the accepted ones marked
    "$2/bin/python" - "$WORK/$1-asyncio.xml" "$WORK/$1-cqloop.xml" "$TOOLS/suites_accepted.txt" <<'PY'
import sys
import xml.etree.ElementTree as ET

def failed(path):
    out = set()
    for case in ET.parse(path).iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            out.add(f"{case.get('classname')}::{case.get('name')}")
    return out

accepted = {}
for line in open(sys.argv[3], encoding="utf-8"):
    name, _, why = line.partition("#")
    if name.strip():
        accepted[name.strip()] = why.strip()
oracle, ours = failed(sys.argv[1]), failed(sys.argv[2])
print(f"failing on asyncio: {len(oracle)}, on cqloop: {len(ours)}")
only_ours = sorted(ours - oracle)
unexpected = [name for name in only_ours if name not in accepted]
print(f"fail on cqloop only: {len(only_ours)} ({len(unexpected)} not accepted)")
for name in only_ours:
    print("   ", name, f"  [accepted: {accepted[name]}]" if name in accepted else "  [NOT ACCEPTED]")
print("fail on asyncio only:", len(oracle - ours))
for name in sorted(oracle - ours):
    print("   ", name)
sys.exit(1 if unexpected else 0)
PY
}

status=0
for name in aiohttp uvicorn; do
    [ -n "${SRC[$name]:-}" ] || continue
    [ -z "$ONLY" ] || [ "$ONLY" = "$name" ] || continue
    venv="$(make_venv "$name")" || exit 1
    "setup_$name" "${SRC[$name]}" "$venv"
    for loop in $LOOPS; do
        run_one "$name" "${SRC[$name]}" "$venv" "$loop" || exit 1
    done
    if [ -f "$WORK/$name-asyncio.xml" ] && [ -f "$WORK/$name-cqloop.xml" ]; then
        compare "$name" "$venv" || status=1
    fi
done
exit $status
