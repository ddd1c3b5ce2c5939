"""How every bkv server runs: one adapter shared by ``bkv hsm serve``, ``bkv host serve``
and ``bkv witness serve``.

- :mod:`bkv.serving.listen`     ``HOST:PORT`` listen addresses (one parser, one behaviour)
- :mod:`bkv.serving.timeouts`   how long a client may take to send a request head and body
- :mod:`bkv.serving.guard`      ASGI middleware: body size and time limits, early answers
                                close the connection, one log line per refused request
- :mod:`bkv.serving.connection` the HTTP/1.1 connection: ``TCP_NODELAY``, the head timeout
- :mod:`bkv.serving.server`     bind, run uvicorn, print the ready line once connections
                                are accepted

Importing this package imports none of its modules (uvicorn only where a server runs).
"""
