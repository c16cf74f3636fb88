"""How traffic moves on a traffic host: one Router interface, one driver per way."""

from __future__ import annotations

from bluegreen.config import Config
from bluegreen.hosts import Host
from bluegreen.routers.base import Router


def router_for(cfg: Config, host: Host) -> Router:
    """The driver for this host, from config (nginx.mode)."""
    if cfg.traffic.router == "haproxy":
        from bluegreen.routers.haproxy import HaproxyRouter
        return HaproxyRouter(cfg, host)
    if cfg.nginx.mode == "lua":
        from bluegreen.routers.nginx_lua import NginxLuaRouter
        return NginxLuaRouter(cfg, host)
    from bluegreen.routers.nginx_reload import NginxReloadRouter
    return NginxReloadRouter(cfg, host)


__all__ = ["Router", "router_for"]
