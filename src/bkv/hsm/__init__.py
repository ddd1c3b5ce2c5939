"""The HSM application of the Backup Key Vault (sans-IO core, thin adapters).

- :mod:`bkv.protocol.messages` the message API: every byte that crosses the host
- :mod:`bkv.protocol.release`  sealing of released secrets under the OPAQUE session key
- :mod:`bkv.hsm.state`    durable vault state, typed commands and ``apply`` (deterministic)
- :mod:`bkv.hsm.app`      :class:`~bkv.hsm.app.HsmApp`: request bytes in, effects out
- :mod:`bkv.hsm.store`    adapter: atomic file storage of the sealed state
- :mod:`bkv.hsm.server`   adapter: HTTP endpoint and configuration (``bkv hsm serve``)

Nothing here is imported by this package module, so importing :mod:`bkv.hsm`
does no I/O.
"""
