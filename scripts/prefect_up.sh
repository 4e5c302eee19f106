#!/usr/bin/env bash
# Start a local Prefect server (SQLite, 127.0.0.1, a free port) and a worker on the process work
# pool, then deploy every deployment of prefect.yaml. State lives in PREFECT_HOME (default
# .prefect/ in the repository); PIDs go to $PREFECT_HOME/{server,worker}.pid and the API URL to
# $PREFECT_HOME/env, so `source .prefect/env` points the prefect CLI at this server.
# Stop with scripts/prefect_down.sh. Env: PREFECT_HOME, PREFECT_PORT (default: a free port),
# SEMSYNTH_POOL (default semsynth-process), PREFECT_DEPLOY=0 to skip deploying.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
BIN="${SEMSYNTH_BIN:-$REPO/.venv/bin}"
export PREFECT_HOME="$(mkdir -p "${PREFECT_HOME:-$REPO/.prefect}" && cd "${PREFECT_HOME:-$REPO/.prefect}" && pwd)"
POOL="${SEMSYNTH_POOL:-semsynth-process}"
LOGS="$PREFECT_HOME/logs"
mkdir -p "$LOGS"

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
if alive "$PREFECT_HOME/server.pid"; then
    echo "prefect server already running (pid $(cat "$PREFECT_HOME/server.pid")); $(cat "$PREFECT_HOME/env")"
    exit 0
fi

PORT="${PREFECT_PORT:-$("$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
export PREFECT_API_URL="http://127.0.0.1:$PORT/api"
export PREFECT_API_DATABASE_CONNECTION_URL="sqlite+aiosqlite:///$PREFECT_HOME/prefect.db"
# The worker asks for due runs every 2 s (Prefect's default is 10): a run starts within seconds.
export PREFECT_WORKER_QUERY_SECONDS="${PREFECT_WORKER_QUERY_SECONDS:-2}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_UI_ENABLED="${PREFECT_UI_ENABLED:-true}"
cat > "$PREFECT_HOME/env" <<ENV
export PREFECT_HOME="$PREFECT_HOME"
export PREFECT_API_URL="$PREFECT_API_URL"
ENV

# Start a command in the background as the leader of its own process group (setsid), so
# prefect_down.sh can end its children too. A non-interactive shell starts background jobs with
# SIGINT ignored, and Python then never raises KeyboardInterrupt: restore the default first, or
# the worker (which ignores SIGTERM) could not be stopped cleanly.
# (An array, not a function: `function &` would fork a subshell and $! would name it instead.)
LAUNCH=(setsid "$BIN/python" -c 'import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.execv(sys.argv[1], sys.argv[1:])')

"${LAUNCH[@]}" "$BIN/prefect" server start --host 127.0.0.1 --port "$PORT" --analytics-off \
    > "$LOGS/server.log" 2>&1 < /dev/null &
echo $! > "$PREFECT_HOME/server.pid"

for _ in $(seq 1 120); do
    if "$BIN/python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" \
        "$PREFECT_API_URL/health" 2>/dev/null; then
        break
    fi
    if ! alive "$PREFECT_HOME/server.pid"; then
        echo "prefect server exited; its log ($LOGS/server.log) ends with:" >&2
        tail -n 20 "$LOGS/server.log" >&2
        exit 1
    fi
    sleep 0.5
done
"$BIN/python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" \
    "$PREFECT_API_URL/health" || { echo "prefect server did not answer in 60 s; see $LOGS/server.log" >&2; exit 1; }

"$BIN/prefect" --no-prompt work-pool create --type process "$POOL" --overwrite > "$LOGS/pool.log" 2>&1 \
    || { cat "$LOGS/pool.log" >&2; exit 1; }
if [[ "${PREFECT_DEPLOY:-1}" != 0 ]]; then
    "$BIN/prefect" --no-prompt deploy --all > "$LOGS/deploy.log" 2>&1 \
        || { echo "prefect deploy failed:" >&2; tail -n 30 "$LOGS/deploy.log" >&2; exit 1; }
fi

"${LAUNCH[@]}" "$BIN/prefect" worker start --pool "$POOL" --name "semsynth-worker-$PORT" \
    > "$LOGS/worker.log" 2>&1 < /dev/null &
echo $! > "$PREFECT_HOME/worker.pid"

echo "prefect server on $PREFECT_API_URL (UI: http://127.0.0.1:$PORT), worker on pool '$POOL'"
echo "pids: server $(cat "$PREFECT_HOME/server.pid"), worker $(cat "$PREFECT_HOME/worker.pid"); logs in $LOGS"
echo "point your shell at it:  source $PREFECT_HOME/env"
