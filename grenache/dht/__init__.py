"""The DHT node: KRPC over UDP, Kademlia routing, BEP 5 peers and BEP 44 items, compatible with
bittorrent-dht as grenache-grape 1.0.0 runs it (docs/protocol.rst, *DHT messages*, *BEP 44 items*).

:class:`~grenache.dht.node.DHTNode` is the node; the other modules are its parts, one job each.
"""
