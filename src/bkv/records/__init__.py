"""bkv.records — per-record storage authenticated by a Merkle radix tree (sans-IO core).

The vault's records leave the HSM: each record is sealed on its own and stored
by the untrusted host, and the HSM keeps only a :class:`~bkv.records.tree.TreeHead`
(tree id, version, root hash) of a binary Merkle radix (Patricia) tree keyed by
the 32-byte record ids. Every read comes with a proof the HSM checks
(membership, or non-membership for "no record"); every batch of changes gives
the host the changed nodes and the HSM a new head. Design and threat model:
docs/architecture.md, "Record storage".

Modules:

- :mod:`bkv.records.nodes` — the nodes, their hashes and their canonical encoding;
- :mod:`bkv.records.proof` — the read proof and its canonical encoding;
- :mod:`bkv.records.tree` — the HSM side (``verify_read``, ``open_record``,
  ``apply_batch``), the full build, and the host side (``TreeStore``,
  ``read_proof``);
- :mod:`bkv.records.store_memory`, :mod:`bkv.records.store_sqlite`,
  :mod:`bkv.records.store_postgres` — the stores (the only I/O here), chosen
  by URL with :func:`bkv.records.engines.open_tree_store`.
"""
