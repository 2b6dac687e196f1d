"""Transport proxies: serve a service on one transport and reach it over another.

A lookup gives ``host:port`` addresses and says nothing of the transport they speak, so a
client of one transport cannot call a service that only speaks another. A proxy listens on the
client's transport, announces what it serves under a key of its own, and forwards each request
to the service over the service's transport with a :class:`~grenache.peer.PeerRPCClient`
(timeouts, failover, errors carried back as the service sent them). docs/proxy.rst is the
guide.

- :mod:`~grenache.proxy.keys`: the key convention (``ws:NAME``) and the control payloads of
  grenache-nodejs-proxy (``rpc_proxy``);
- :mod:`~grenache.proxy.rpc`: :class:`RPCProxy` and its :class:`ForwardingClients`;
- :mod:`~grenache.proxy.relay`: :class:`PubSubRelay`, which republishes a name's messages on
  another transport;
- :mod:`~grenache.proxy.service`: :class:`ProxyService`, what ``grenache proxy`` and
  ``twistd grenache-proxy`` run.
"""

from grenache.proxy.keys import (
    CONTROL_KEY,
    BadControlPayload,
    ControlCommand,
    Route,
    parse_control,
    parse_key,
    proxied_key,
)
from grenache.proxy.relay import PubSubRelay
from grenache.proxy.rpc import (
    DEFAULT_MAX_KEYS,
    ForwardingClients,
    ProxyLimitReached,
    RPCProxy,
    not_proxied,
)
from grenache.proxy.service import CONTROL, PUBSUB, STATIC, ProxyConfig, ProxyError, ProxyService

__all__ = [
    "CONTROL",
    "CONTROL_KEY",
    "DEFAULT_MAX_KEYS",
    "PUBSUB",
    "STATIC",
    "BadControlPayload",
    "ControlCommand",
    "ForwardingClients",
    "ProxyConfig",
    "ProxyError",
    "ProxyLimitReached",
    "ProxyService",
    "PubSubRelay",
    "RPCProxy",
    "Route",
    "not_proxied",
    "parse_control",
    "parse_key",
    "proxied_key",
]
