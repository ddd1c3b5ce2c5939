"""The operator's host: the untrusted HTTP front end of the vault (an adapter; holds no secret).

- :mod:`bkv.host.app`       Starlette routes: authenticate, rate-limit, relay to the HSM
- :mod:`bkv.host.config`    the TOML configuration
- :mod:`bkv.host.ratelimit` token buckets
- :mod:`bkv.host.bundle`    the served validation bundle and cached consistency proofs
- :mod:`bkv.host.server`    uvicorn (``bkv host serve``)

Importing this package imports none of its modules.
"""
