#!/usr/bin/env bash
# Stop what scripts/prefect_up.sh started, by the PIDs it wrote. The worker first, with SIGINT
# (the process worker ignores SIGTERM) so it releases its flow runs; then the server. Each is a
# process-group leader (setsid), so its children go too; SIGKILL after a grace period.
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFECT_HOME="${PREFECT_HOME:-$REPO/.prefect}"
GRACE="${PREFECT_STOP_GRACE:-20}"

stop() {  # stop NAME SIGNAL
    local pidfile="$PREFECT_HOME/$1.pid" pid
    [[ -f "$pidfile" ]] || { echo "no $1 pid file in $PREFECT_HOME"; return 0; }
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -s "$2" "$pid" 2>/dev/null
        for _ in $(seq 1 $((GRACE * 4))); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "$1 (pid $pid) still running after ${GRACE}s: SIGKILL"
            kill -s KILL "$pid" 2>/dev/null
        fi
        # Leftover children in its group (uvicorn, flow-run subprocesses).
        kill -s TERM -- "-$pid" 2>/dev/null && sleep 1 && kill -s KILL -- "-$pid" 2>/dev/null
        echo "stopped $1 (pid $pid)"
    else
        echo "$1 (pid $pid) was not running"
    fi
    rm -f "$pidfile"
}

stop worker INT
stop server TERM
rm -f "$PREFECT_HOME/env"
