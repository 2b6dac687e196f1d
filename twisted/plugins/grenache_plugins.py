from twisted.application.service import ServiceMaker

grape = ServiceMaker(
    "grape",
    "grenache.grape.tap",
    "A Grenache grape: a DHT node with HTTP and WebSocket APIs",
    "grape",
)
