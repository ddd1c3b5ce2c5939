"""The HSM application of the Backup Key Vault (sans-IO core, thin adapters).

- :mod:`bkv.protocol.messages` the message API: every byte that crosses the host
- :mod:`bkv.protocol.release`  sealing of released secrets under the OPAQUE session key
- :mod:`bkv.hsm.state`    durable vault state, typed commands and ``apply`` (deterministic)
- :mod:`bkv.hsm.app`      :class:`~bkv.hsm.app.HsmApp`: request bytes in, effects out
- :mod:`bkv.hsm.sessions` the app's volatile tables: open login sessions, started registrations
- :mod:`bkv.hsm.public_keys` ``public-keys.json``: the fleet's public keys as canonical JSON
- :mod:`bkv.hsm.store`    adapter: atomic file storage of the sealed state
- :mod:`bkv.hsm.config`   adapter: the TOML configuration file
- :mod:`bkv.hsm.device`   adapter: sealing key and NV counter, locked to one process
- :mod:`bkv.hsm.node`     adapter: app + device + store, the persist protocol, fail-safe latch
- :mod:`bkv.hsm.pause`    adapter: crash-test pause points (tests only)
- :mod:`bkv.hsm.http`     adapter: HTTP endpoint behind the host link MAC, housekeeping task
- :mod:`bkv.hsm.process`  adapter: ``bkv hsm init`` and ``bkv hsm serve``

Nothing here is imported by this package module, so importing :mod:`bkv.hsm`
does no I/O.
"""
