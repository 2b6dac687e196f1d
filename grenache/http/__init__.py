"""The lean HTTP/1.1 stack shared by the grape API and the HTTP transport, one job a module.

- :mod:`grenache.http.messages`: requests, responses and how a response is written;
- :mod:`grenache.http.streams`: message bodies as they arrive (``deliverBody``) and as they
  are written (an ``IConsumer``), and :func:`~grenache.http.streams.read_body`;
- :mod:`grenache.http.server`: the server protocol and factory (on ``httptools``), with its
  documented override points;
- :mod:`grenache.http.server_stream`: the requests and responses the server streams;
- :mod:`grenache.http.client`: the buffered client (pooled keep-alive connections);
- :mod:`grenache.http.stream_client`: the streaming client, on ``twisted.web.client.Agent``.

A client module never imports a server module. Speed code that relies on private Twisted
internals lives in :mod:`grenache.speedups.twisted_tcp`.
"""
