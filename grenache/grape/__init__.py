"""The grape: a DHT node serving the HTTP API links use, and optionally the WebSocket API.

:class:`~grenache.grape.service.Grape` runs one in a program; :mod:`grenache.grape.tap` is
``twistd grape``.
"""
