"""How traffic moves on a traffic host: one Router interface, one driver per way.

`nginx.mode = "auto"` (the default) asks the nginx on each traffic host, once per run,
whether the lua module is loaded: if so it switches with no reload (lua), otherwise by
reload, saying at each switch what that costs and how to get lua mode.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bluegreen.config import Config, hosts_named_not_ip
from bluegreen.errors import BluegreenError
from bluegreen.hosts import Host
from bluegreen.routers.base import Router

# what nginx itself says: `-V` (compiled-in modules) and the load_module lines of `-T` (the
# whole configuration as nginx reads it, includes such as modules-enabled/ followed)
PROBE_SPLIT = "--- bluegreen: load_module lines of nginx -T ---"
# include integration only: when -T fails, why (`nginx -t`'s [emerg] line) and the
# load_module lines of the main config file and the files it includes
FALLBACK_SPLIT = "--- bluegreen: nginx -T failed: its error, and the main config load_module ---"
_MISSING_FILE = re.compile(r'open\(\) "([^"]+)" failed \(2: ')
# the main config file from `nginx -t`'s last line, then the files its `include` lines
# name (relative ones against its directory, as nginx reads them; globs expanded, so a
# path with a space in it is not followed), and the load_module lines of all of them
_MAIN_CONFIG_LOAD_MODULE = r"""
t=$(NGINX -t 2>&1)
printf '%s\n' "$t" | grep -F '[emerg]' | head -n 3
main=$(printf '%s\n' "$t" | sed -n 's/^nginx: configuration file \(.*\) test failed$/\1/p')
if [ -r "$main" ]; then
  dir=$(dirname "$main")
  incs=$(grep -E '^[[:space:]]*include[[:space:]]' "$main" | tr -d "\"'" |
         sed -E 's/^[[:space:]]*include[[:space:]]+//; s/[[:space:]]*;.*$//')
  for inc in $incs; do
    case "$inc" in /*) ;; *) inc="$dir/$inc";; esac
    for f in $inc; do [ -f "$f" ] && grep -hE '^[[:space:]]*load_module[[:space:]]' "$f"; done
  done
  grep -hE '^[[:space:]]*load_module[[:space:]]' "$main"
fi
"""
_STATIC_LUA = re.compile(r"--add-module=\S*(?:lua-nginx-module|ngx_lua|http-lua)")
_LOAD_LUA = re.compile(r"""^\s*load_module\s+["']?[^;"']*ngx_http_lua_module\.so["']?\s*;""")
_PROBE_RC = re.compile(r"^--- rc (\d+)$", re.M)
HOW_TO_GET_LUA = ("for switches without a reload, install libnginx-mod-http-lua (Debian; it "
                  "loads itself through modules-enabled/) or load ngx_http_lua_module in "
                  "nginx.conf")


@dataclass(frozen=True)
class LuaProbe:
    """Whether nginx on a host has the lua module, and how that is known (in words)."""

    lua: bool
    why: str


def lua_probe_script(nginx_command: str, own_files: Sequence[str] = ()) -> str:
    """One round trip: `nginx -V`, then the `load_module` lines of `nginx -T` (only those
    cross the wire, however large the configuration) and -T's exit code.

    Commented-out lines do not count: the line must start with load_module. A -T that
    fails (a broken config, or sudo rules that allow only -t and -s reload) answers
    "unknown", which auto mode treats as no lua. With `own_files` (the include
    integration's snippets) a failed -T also sends `nginx -t`'s error and the main
    config's load_module lines: before the first deploy the user's server block includes
    snippets that do not exist yet, so -T cannot succeed then (parse_lua_probe).
    """
    script = (f"{nginx_command} -V 2>&1; echo '{PROBE_SPLIT}'; "
              f"{nginx_command} -T 2>/dev/null | grep -E '^[[:space:]]*load_module[[:space:]]'; "
              'rc=${PIPESTATUS[0]}; echo "--- rc $rc"')
    if own_files:
        script += (f"; if [ \"$rc\" != 0 ]; then echo '{FALLBACK_SPLIT}';"
                   + _MAIN_CONFIG_LOAD_MODULE.replace("NGINX", nginx_command) + "fi")
    return script


def parse_lua_probe(output: str, own_files: Sequence[str] = ()) -> LuaProbe:
    version, _, rest = output.partition(PROBE_SPLIT)
    config, _, fallback = rest.partition(FALLBACK_SPLIT)
    if _STATIC_LUA.search(version):
        return LuaProbe(True, "the lua module is compiled into nginx")
    rc = _PROBE_RC.search(config)
    if not config or rc is None or rc.group(1) != "0":
        # -T fails only because one of our own snippets is not written yet (the user's
        # server includes it before the first deploy): the main config, which is where a
        # load_module must be, says it all
        missing = _MISSING_FILE.search(fallback)
        if (missing and missing[1] in own_files
                and any(_LOAD_LUA.match(line) for line in fallback.splitlines())):
            return LuaProbe(True, f"nginx.conf loads ngx_http_lua_module (`nginx -T` fails "
                                  f"until the first deploy writes {missing[1]})")
        return LuaProbe(False, "`nginx -T` failed, so its modules are unknown")
    if any(_LOAD_LUA.match(line) for line in config.splitlines()):
        return LuaProbe(True, "nginx loads ngx_http_lua_module")
    return LuaProbe(False, "nginx does not load ngx_http_lua_module")


# one probe per host per run: a Run builds its routers once, and `fab status` too, but the
# answer is kept with the host object (which lives exactly as long as the run's fleet)
_PROBED: weakref.WeakKeyDictionary[Host, LuaProbe] = weakref.WeakKeyDictionary()


def probe_lua(cfg: Config, host: Host) -> LuaProbe:
    known = _PROBED.get(host)
    if known is not None:
        return known
    own = tuple(cfg.nginx_snippets.values())  # include integration: what we will write
    try:
        result = host.run(lua_probe_script(cfg.nginx.command, own), mutates=False, check=False,
                          timeout=cfg.nginx.verify_timeout + 30,
                          says="ask nginx whether the lua module is loaded")
    except BluegreenError as exc:  # unreachable: not cached, the run's next step says why
        return LuaProbe(False, f"nginx could not be asked ({exc.what.splitlines()[0]})")
    _PROBED[host] = probe = parse_lua_probe(result.stdout, own)
    return probe


def choose_mode(cfg: Config, host: Host) -> tuple[str, str]:
    """(reload | lua, why) for this traffic host."""
    mode = cfg.nginx.mode
    if mode != "auto":
        return mode, f"nginx.mode = {mode!r}"
    if cfg.nginx.template:  # your template decides: one with the lua control pieces is lua
        from bluegreen.render import is_lua_config, render

        text = render(cfg, "blue", "", "", generation=0)
        return ("lua" if is_lua_config(text) else "reload"), f"your template {cfg.nginx.template}"
    named = hosts_named_not_ip(cfg)
    if named:
        i, addr = named[0]
        return "reload", (f"lua mode routes by IP address and hosts.app[{i}] is {addr!r}: give "
                          "it `upstream = \"<its IP>\"`")
    probe = probe_lua(cfg, host)
    return ("lua" if probe.lua else "reload"), probe.why


def router_for(cfg: Config, host: Host) -> Router:
    """The driver for this host: traffic.router, then nginx.mode (auto: what its nginx has)."""
    if cfg.traffic.router == "haproxy":
        from bluegreen.routers.haproxy import HaproxyRouter
        return HaproxyRouter(cfg, host)
    mode, why = choose_mode(cfg, host)
    if mode == "lua":
        from bluegreen.routers.nginx_lua import NginxLuaRouter
        return NginxLuaRouter(cfg, host)
    from bluegreen.routers.nginx_reload import NginxReloadRouter
    router = NginxReloadRouter(cfg, host)
    router.notice = (f"reload mode ({why}): keep-alive clients may see a reset at this "
                     f"switch; {HOW_TO_GET_LUA}"
                     + ("" if cfg.nginx.mode == "auto" else
                        ", and leave nginx.mode unset (auto)"))
    return router


def switch_notices(routers: Iterable[Router]) -> list[str]:
    """One line per distinct notice, naming the hosts it is about."""
    hosts: dict[str, list[str]] = {}
    for r in routers:
        if r.notice:
            hosts.setdefault(r.notice, []).append(r.label)
    return [f"{text} [{', '.join(labels)}]" for text, labels in hosts.items()]


__all__ = ["LuaProbe", "Router", "parse_lua_probe", "router_for", "switch_notices"]
