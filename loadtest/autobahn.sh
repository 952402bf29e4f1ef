#!/usr/bin/env bash
# Autobahn|Testsuite conformance run through wsedge.
#
#   fuzzingclient ──► wsedge (127.0.0.1:9003) ──► Autobahn echo server (127.0.0.1:9002)
#   fuzzingclient ──────────────────────────────► Autobahn echo server   ("direct", for comparison)
#
# Usage: loadtest/autobahn.sh [--full | --quick] [--tls]
#   --full   (default) sections 1-7, 9, 10 (12.*/13.* are permessage-deflate: out of scope)
#   --quick  a few-seconds subset meant for CI (see loadtest/autobahn/cases.json)
#   --tls    the fuzzingclient dials wss:// and wsedge terminates TLS (a
#            certificate made with `openssl req` for the run; the echo server
#            stays plain ws://, as "direct" does)
#
# Needs Python 2.7 (autobahntestsuite is Python 2 only; pyenv's 2.7.18 is
# found automatically) and PyPI to create the virtualenv the first time. When
# Python 2.7 or the virtualenv can't be had, it prints "skipped" and exits 0
# (so CI never fails on that) unless AUTOBAHN_REQUIRE=1.
#
# Exit status: 0 when wsedge has no FAILED/UNIMPLEMENTED case (and no FAILED/
# UNCLEAN close, no case missing compared with the direct run); 1 otherwise.
#
# Environment:
#   AUTOBAHN_PYTHON2     Python 2.7 interpreter (default: search PATH and pyenv)
#   AUTOBAHN_VENV        virtualenv directory (default: target/autobahn-venv)
#   AUTOBAHN_OUT         reports and logs (default: target/autobahn)
#   AUTOBAHN_ECHO_PORT   echo server port (default 9002)
#   AUTOBAHN_PROXY_PORT  wsedge port (default 9003)
#   AUTOBAHN_REQUIRE=1   fail instead of skipping when Python 2.7 / the venv is missing
#   AUTOBAHN_STRICT=1    also fail when wsedge has a NON-STRICT case
#   AUTOBAHN_TIMEOUT     seconds the fuzzingclient may run (default 1800; quick: 300)
#   WSEDGE_BIN           use this wsedge binary instead of `cargo build --release`
#                        (e.g. target/debug/wsedge for a quick CI run)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

MODE=full
TLS=0
for arg in "$@"; do
    case "$arg" in
        --full) MODE=full ;;
        --tls) TLS=1 ;;
        --quick) MODE=quick ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "autobahn.sh: unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

CFG="$ROOT/loadtest/autobahn"
OUT=${AUTOBAHN_OUT:-$ROOT/target/autobahn}
VENV=${AUTOBAHN_VENV:-$ROOT/target/autobahn-venv}
ECHO_PORT=${AUTOBAHN_ECHO_PORT:-9002}
PROXY_PORT=${AUTOBAHN_PROXY_PORT:-9003}
if [[ $MODE == quick ]]; then TIMEOUT=${AUTOBAHN_TIMEOUT:-300}; else TIMEOUT=${AUTOBAHN_TIMEOUT:-1800}; fi
PY3=$(command -v python3 || true)

log() { echo "autobahn: $*"; }
skip() {
    if [[ ${AUTOBAHN_REQUIRE:-0} == 1 ]]; then
        log "error: $* (AUTOBAHN_REQUIRE=1)" >&2
        exit 1
    fi
    log "skipped: $*"
    exit 0
}

[[ -n $PY3 ]] || skip "python3 not found (needed to write the spec and parse the report)"

# ---------------------------------------------------------------- Python 2.7
is_py27() { [[ -n $1 ]] && "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (2, 7) else 1)' >/dev/null 2>&1; }

find_py27() {
    local c
    for c in "${AUTOBAHN_PYTHON2:-}" \
        "$(pyenv prefix 2.7.18 2>/dev/null)/bin/python2.7" \
        "${PYENV_ROOT:-$HOME/.pyenv}"/versions/2.7*/bin/python2.7 \
        "$(command -v python2.7 2>/dev/null)" \
        "$(command -v python2 2>/dev/null)"; do
        if is_py27 "$c"; then
            echo "$c"
            return 0
        fi
    done
    return 1
}

setup_venv() {
    local stamp="$VENV/.requirements.sha256" want
    want=$(sha256sum "$CFG/requirements.txt" | cut -d' ' -f1)
    if [[ -x $VENV/bin/wstest && -f $stamp && $(cat "$stamp") == "$want" ]]; then
        return 0
    fi
    local py27
    py27=$(find_py27) || skip "no Python 2.7 interpreter (set AUTOBAHN_PYTHON2, or: pyenv install 2.7.18)"
    log "creating virtualenv $VENV with $py27"
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")" "$OUT"
    local vlog="$OUT/venv-setup.log"
    : >"$vlog"
    # virtualenv 16.7 is a single module with no dependencies that still
    # supports Python 2.7; use an installed one if there is, else install it
    # into a private directory rather than into the interpreter.
    local vpath=""
    if ! "$py27" -m virtualenv --version >/dev/null 2>&1; then
        vpath="$OUT/virtualenv-py27"
        if [[ ! -f $vpath/virtualenv.py ]]; then
            "$py27" -m pip install --disable-pip-version-check -q --target "$vpath" 'virtualenv==16.7.12' >>"$vlog" 2>&1 ||
                skip "could not install virtualenv for Python 2.7 (see $vlog)"
        fi
    fi
    PYTHONPATH="$vpath" "$py27" -m virtualenv -q "$VENV" >>"$vlog" 2>&1 ||
        skip "could not create the virtualenv (see $vlog)"
    "$VENV/bin/pip" install --disable-pip-version-check -q -r "$CFG/requirements.txt" >>"$vlog" 2>&1 ||
        { rm -rf "$VENV"; skip "could not install autobahntestsuite (see $vlog)"; }
    "$VENV/bin/wstest" --autobahnversion >>"$vlog" 2>&1 ||
        { rm -rf "$VENV"; skip "wstest does not run (see $vlog)"; }
    echo "$want" >"$stamp"
}

setup_venv
mkdir -p "$OUT"
AB_VERSION=$("$VENV/bin/python" -c 'import autobahntestsuite, autobahn; print("autobahntestsuite %s, autobahn %s" % (autobahntestsuite.version, autobahn.version))' 2>/dev/null)
log "$AB_VERSION ($("$VENV/bin/python" -V 2>&1))"

# ---------------------------------------------------------------- wsedge
if [[ -n ${WSEDGE_BIN:-} ]]; then
    BIN=$WSEDGE_BIN
else
    log "cargo build --release --bin wsedge"
    cargo build --release --quiet --bin wsedge
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/wsedge"
fi
[[ -x $BIN ]] || { log "error: $BIN not found" >&2; exit 1; }

# ---------------------------------------------------------------- servers
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # port pid name
    for _ in $(seq 1 100); do
        port_open "$1" && return 0
        kill -0 "$2" 2>/dev/null || { log "error: $3 exited at startup (see $OUT/$3.log)" >&2; exit 1; }
        sleep 0.1
    done
    log "error: $3 did not listen on 127.0.0.1:$1 within 10 s" >&2
    exit 1
}

for p in "$ECHO_PORT" "$PROXY_PORT"; do
    if port_open "$p"; then
        log "error: 127.0.0.1:$p is already in use (set AUTOBAHN_ECHO_PORT / AUTOBAHN_PROXY_PORT)" >&2
        exit 1
    fi
done

# The reference echo server: what `wstest -m echoserver` runs, less its check
# that the Host header names its own port (which fails every case behind a
# proxy on another port): see loadtest/autobahn/echoserver.py.
"$VENV/bin/python" "$CFG/echoserver.py" "ws://127.0.0.1:$ECHO_PORT" >"$OUT/echoserver.log" 2>&1 &
PIDS+=($!)
wait_port "$ECHO_PORT" "$!" echoserver

TLS_ARGS=()
SCHEME=ws
RUN=$MODE
if [[ $TLS == 1 ]]; then
    command -v openssl >/dev/null || { log "error: --tls needs the openssl command" >&2; exit 1; }
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
        -addext basicConstraints=critical,CA:FALSE \
        -keyout "$OUT/tls-key.pem" -out "$OUT/tls-cert.pem" >"$OUT/openssl.log" 2>&1 ||
        { log "error: openssl req failed (see $OUT/openssl.log)" >&2; exit 1; }
    TLS_ARGS=(--tls-cert "$OUT/tls-cert.pem" --tls-key "$OUT/tls-key.pem")
    SCHEME=wss
    RUN=$MODE-tls
fi
WSEDGE_LOG=${WSEDGE_LOG:-info} "$BIN" --listen "127.0.0.1:$PROXY_PORT" --upstream "127.0.0.1:$ECHO_PORT" --workers 1 "${TLS_ARGS[@]+"${TLS_ARGS[@]}"}" >"$OUT/wsedge.log" 2>&1 &
WSEDGE_PID=$!
PIDS+=("$WSEDGE_PID")
wait_port "$PROXY_PORT" "$WSEDGE_PID" wsedge

# ---------------------------------------------------------------- fuzzingclient
REPORTS="$OUT/reports-$RUN"
SPEC="$OUT/fuzzingclient-$RUN.json"
rm -rf "$REPORTS"
"$PY3" - "$CFG/cases.json" "$MODE" "$REPORTS" "$ECHO_PORT" "$PROXY_PORT" "$SCHEME" >"$SPEC" <<'EOF'
import json, sys
cases_file, mode, outdir, echo_port, proxy_port, scheme = sys.argv[1:]
with open(cases_file) as f:
    cases = json.load(f)[mode]
json.dump({
    "outdir": outdir,
    "servers": [
        {"agent": "direct", "url": "ws://127.0.0.1:%s" % echo_port},
        {"agent": "wsedge", "url": "%s://127.0.0.1:%s" % (scheme, proxy_port)},
    ],
    "cases": cases,
    "exclude-cases": [],
    "exclude-agent-cases": {},
}, sys.stdout, indent=2)
EOF

log "fuzzingclient ($RUN): spec $SPEC, log $OUT/fuzzingclient-$RUN.log"
START=$(date +%s)
rc=0
(cd "$OUT" && timeout "$TIMEOUT" "$VENV/bin/wstest" -m fuzzingclient -s "$SPEC") >"$OUT/fuzzingclient-$RUN.log" 2>&1 || rc=$?
log "fuzzingclient finished in $(($(date +%s) - START)) s (exit $rc)"
if [[ $rc -ne 0 ]]; then
    tail -n 20 "$OUT/fuzzingclient-$RUN.log" >&2
    log "error: the fuzzingclient failed (exit $rc$([[ $rc == 124 ]] && echo ": timed out after $TIMEOUT s"))" >&2
    exit 1
fi
if ! kill -0 "$WSEDGE_PID" 2>/dev/null; then
    wrc=0
    wait "$WSEDGE_PID" || wrc=$?
    log "error: wsedge exited during the run with status $wrc$( ((wrc > 128)) && echo " (signal $((wrc - 128)))") (see $OUT/wsedge.log)" >&2
    tail -n 20 "$OUT/wsedge.log" >&2
    exit 1
fi

log "report: $REPORTS/index.html"
STRICT=()
[[ ${AUTOBAHN_STRICT:-0} == 1 ]] && STRICT=(--strict)
"$PY3" "$CFG/summarize.py" "$REPORTS" --check wsedge --reference direct --markdown "$OUT/summary-$RUN.md" "${STRICT[@]}"
