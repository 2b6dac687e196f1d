from twisted.application.service import ServiceMaker

grape = ServiceMaker(
    "grape",
    "grenache.grape.tap",
    "A Grenache grape: a DHT node with HTTP and WebSocket APIs",
    "grape",
)

grenache_service = ServiceMaker(
    "grenache-service",
    "grenache.service_tap",
    "A Grenache RPC service: a handler served on HTTP or WebSocket (TLS optional) and "
    "announced to a grape",
    "grenache-service",
)

grenache_proxy = ServiceMaker(
    "grenache-proxy",
    "grenache.proxy_tap",
    "A Grenache transport proxy: serves services on one transport through another "
    "(grenache-nodejs-proxy's control protocol without --name)",
    "grenache-proxy",
)
