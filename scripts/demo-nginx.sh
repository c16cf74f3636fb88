#!/usr/bin/env bash
# Start (or reuse) the demo's private nginx: prefix /tmp/bluegreen-demo/nginx, 127.0.0.1 only.
# Usage: scripts/demo-nginx.sh start|stop|reset  (reset: stop the demo's app slots and nginx,
# and remove /tmp/bluegreen-demo, so the next `make demo` starts from nothing)
set -euo pipefail
prefix=/tmp/bluegreen-demo/nginx
args=(-p "$prefix" -c "$prefix/nginx.conf")
case "${1:-start}" in
start)
  mkdir -p "$prefix"/{conf.d,tmp,logs}
  cat > "$prefix/nginx.conf" <<CONF
# The demo's own nginx: every path under $prefix, loopback only, no root paths touched.
# Debian's lua module (libnginx-mod-http-lua) lets bluegreen switch slots without a reload:
# nginx.mode = "auto", the default, sees these lines (nginx -T) and uses it. A system nginx
# loads it through /etc/nginx/modules-enabled/ once the package is installed.
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
worker_processes 2;
# bounds how long old workers keep serving after a reload (long requests, websockets)
worker_shutdown_timeout 60s;
pid $prefix/nginx.pid;
error_log $prefix/error.log notice;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $prefix/tmp/body;
    proxy_temp_path $prefix/tmp/proxy;
    fastcgi_temp_path $prefix/tmp/fastcgi;
    uwsgi_temp_path $prefix/tmp/uwsgi;
    scgi_temp_path $prefix/tmp/scgi;
    # bluegreen renders its upstream + server block into this directory
    include $prefix/conf.d/*.conf;
}
CONF
  if [ -f "$prefix/nginx.pid" ] && kill -0 "$(cat "$prefix/nginx.pid")" 2>/dev/null; then
    nginx "${args[@]}" -t -q && nginx "${args[@]}" -s reload
    echo "demo nginx already running (pid $(cat "$prefix/nginx.pid")), reloaded"
  else
    nginx "${args[@]}" -t -q
    nginx "${args[@]}"
    echo "demo nginx started (pid $(cat "$prefix/nginx.pid"))"
  fi
  ;;
stop)
  if [ -f "$prefix/nginx.pid" ]; then nginx "${args[@]}" -s quit || true; fi
  ;;
reset)
  # the demo's status page (bluegreen serve), by the pid demo.sh recorded
  if [ -f /tmp/bluegreen-demo/automation/serve.pid ]; then
    kill -TERM "$(cat /tmp/bluegreen-demo/automation/serve.pid)" 2>/dev/null || true
  fi
  # the slots run in their own process groups; their pidfiles say which (pid starttime)
  for pf in /tmp/bluegreen-demo/srv/*/slots/*/pid; do
    [ -f "$pf" ] || continue
    read -r pid _ < "$pf" || continue
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  if [ -f "$prefix/nginx.pid" ]; then
    kill -QUIT "$(cat "$prefix/nginx.pid")" 2>/dev/null || true
  fi
  sleep 0.5
  rm -rf /tmp/bluegreen-demo
  echo "demo stopped and removed"
  ;;
esac
