#!/bin/bash
# switch.sh - the classic switch step, kept faithful ON PURPOSE (baseline):
#   rewrite the one-line include file with tee, then reload nginx.
#
# Weaknesses kept: tee rewrites the live file in place (not atomic), no `nginx -t`
# before the reload and no restore of the old file when it fails, no probe through the
# front door afterwards, and the reload drops idle client keep-alive connections.
#
# Usage: switch.sh PORT
# Env:   INCLUDE_FILE  the file nginx includes                      (required)
#        NGINX_ARGS    e.g. "-p /tmp/x -c /tmp/x/nginx.conf"        (default: none)
#        NGINX_BIN     nginx binary                                 (default nginx)
#        UPSTREAM_HOST host the app listens on                      (default 127.0.0.1)
set -u

PORT=${1:?usage: switch.sh PORT}
INCLUDE_FILE=${INCLUDE_FILE:?INCLUDE_FILE must name the nginx include file}
NGINX_ARGS=${NGINX_ARGS:-}
NGINX_BIN=${NGINX_BIN:-nginx}
UPSTREAM_HOST=${UPSTREAM_HOST:-127.0.0.1}

echo "set \$service_url http://$UPSTREAM_HOST:$PORT;" | tee "$INCLUDE_FILE"
# the original runs `service nginx reload`; a private nginx takes the same -p/-c
# NGINX_ARGS is split on purpose: it holds several arguments
# shellcheck disable=SC2086
"$NGINX_BIN" $NGINX_ARGS -s reload
