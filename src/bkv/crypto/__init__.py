"""Cryptographic core of bkv (sans-IO: no I/O, no clock; randomness is injected).

- :mod:`bkv.crypto.rng`        the injected randomness type
- :mod:`bkv.crypto.ristretto`  ristretto255 group and scalar operations over libsodium
- :mod:`bkv.crypto.hkdf`       SHA-512, HMAC-SHA512, HKDF-SHA512 (RFC 5869)
- :mod:`bkv.crypto.oprf`       RFC 9497 OPRF mode, ristretto255-SHA512
- :mod:`bkv.crypto.ksf`        key stretching functions (Identity, Argon2id)
- :mod:`bkv.crypto.opaque`     RFC 9807 OPAQUE-3DH, ristretto255-SHA512
- :mod:`bkv.crypto.channel`    HPKE request sealing (separate owner)
"""
