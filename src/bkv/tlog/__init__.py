"""bkv.tlog — the witness's append-only audit log: RFC 6962/9162 and the C2SP formats.

Everything here is sans-IO except :mod:`bkv.tlog.store_sqlite` (the storage
adapter). Modules:

- :mod:`bkv.tlog.merkle` — RFC 9162 section 2.1 hashing; ``verify_inclusion``,
  ``verify_consistency`` (raise ``InclusionProofError`` / ``ConsistencyProofError``),
  ``root_from_inclusion_proof``, ``leaf_hash``, ``node_hash``, ``root_hash``.
- :mod:`bkv.tlog.log` — ``MerkleLog`` over a ``LogStore`` (``HashStore`` +
  ``EntryStore``), ``MemoryHashStore``; ``append``/``append_many``, ``root``,
  ``inclusion_proof``, ``consistency_proof``, O(log n) hash reads per proof.
- :mod:`bkv.tlog.store_sqlite` — ``SqliteLogStore`` (WAL, one transaction per batch).
- :mod:`bkv.tlog.tiles` — C2SP tlog-tiles: ``serve_tile(log, path)`` for the
  HTTP adapter; ``verify_inclusion_with_tiles``, ``consistency_proof_from_tiles``,
  ``tiles_for_inclusion_proof`` for clients reading tiles.
- :mod:`bkv.tlog.note` — C2SP signed-note (Ed25519): ``sign_note``, ``open_note``,
  verifier/signer key strings.
- :mod:`bkv.tlog.checkpoint` — C2SP tlog-checkpoint: ``Checkpoint``,
  ``parse_checkpoint``, ``open_checkpoint``.
- :mod:`bkv.tlog.cosignature` — C2SP tlog-cosignature cosignature/v1:
  ``CosignatureSigner``, ``CosignatureVerifier``, ``CosignerPolicy``.
- :mod:`bkv.tlog.witness_protocol` — C2SP tlog-witness ``add-checkpoint``:
  ``parse_add_checkpoint``, ``add_checkpoint``, ``MemoryWitness``.

Typical client check of a logged statement::

    cp = open_checkpoint(note_bytes, ORIGIN, [log_verifier])
    CosignerPolicy(required=1, cosigners=[w1, w2]).verify_checkpoint(cp)
    verify_inclusion(leaf_hash(entry), index, cp.size, proof, cp.root_hash)
    verify_consistency(last.size, cp.size, consistency, last.root_hash, cp.root_hash)
"""
