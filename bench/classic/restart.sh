#!/bin/bash
# restart.sh - the classic "restart" step, kept faithful ON PURPOSE: it is the baseline
# that bluegreen is measured against, weaknesses included.
#
#   stop whatever listens on the idle port (kill -15), sleep a fixed time, and start the
#   new build there with nohup ... &
#
# Weaknesses kept as in the original (do not fix them here):
#   - no drain: the idle port may have been live moments ago (back-to-back deploys) and
#     may still serve in-flight requests; they are cut;
#   - `kill; sleep N` does not wait for the port to be free, it just hopes;
#   - no supervisor: the app is a bare nohup child.
#
# Usage: restart.sh PORT
# Env:   APP_DIR     unpacked build to start (has bin/runner)       (required)
#        STOP_SLEEP  seconds to sleep after kill -15                (default 5)
#        LOG_DIR     where nohup output goes                        (default $APP_DIR)
#        PIDFILE_DIR where the started pid is written               (default $LOG_DIR)
#        anything else (GRACEFUL=0, BLUEGREEN_SLOT, ...) is passed to the app as-is
set -u

PORT=${1:?usage: restart.sh PORT}
APP_DIR=${APP_DIR:?APP_DIR must point at the unpacked build}
STOP_SLEEP=${STOP_SLEEP:-5}
LOG_DIR=${LOG_DIR:-$APP_DIR}
PIDFILE_DIR=${PIDFILE_DIR:-$LOG_DIR}

# the original: kill -15 $(lsof -t -i:$PORT). -sTCP:LISTEN so we kill the app that
# listens there, not nginx workers that hold upstream connections to that port.
PID=$(lsof -t -iTCP:"$PORT" -sTCP:LISTEN 2>/dev/null)
if [ -n "$PID" ]; then
    echo "restart: kill -15 $PID (port $PORT)"
    kill -15 $PID
fi
sleep "$STOP_SLEEP"

echo "restart: starting $APP_DIR on port $PORT"
nohup "$APP_DIR/bin/runner" "$PORT" >> "$LOG_DIR/app-$PORT.log" 2>&1 &
echo $! > "$PIDFILE_DIR/app-$PORT.pid"
