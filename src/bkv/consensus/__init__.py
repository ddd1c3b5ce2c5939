"""bkv.consensus — majority consensus among a fleet's HSMs, inside their boundary (sans-IO).

The host relays every message between the HSMs and stores the log; it may
drop, delay, duplicate, reorder or replay any message, but it cannot forge one:
every message is MAC'd under a key only the fleet's HSMs hold, and bound to the
fleet, the sender, the receiver and the term; every log entry is MAC'd and
chained to the one before it. The protocol is Raft (Ongaro and Ousterhout,
"In Search of an Understandable Consensus Algorithm", 2014) over entry
headers, with a rejoin fence after every restart so that a member whose
private state was rolled back cannot vote twice (docs/architecture.md, "The fleet").

Modules:

- :mod:`bkv.consensus.membership` — the members, their datacenters, the quorum;
- :mod:`bkv.consensus.messages` — the wire messages, entry headers, MACs;
- :mod:`bkv.consensus.replica` — one member's state machine.
"""
