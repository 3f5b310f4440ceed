"""Stores: where sessions, their events, transcripts and artefacts live beyond one process.

`base` is the Store protocol the sessions use (and the records it hands back);
`memory` keeps nothing beyond each session's ring; `writer` is the one group-commit
writer both durable stores share (take everything pending, commit it at once, back off
while the backend fails, publish only what committed); `sqlite/` is the embedded store
(the default) and `postgres/` the shared one with leases and failover; each has its own
SessionStore for the SDK's transcript mirror (`transcript_keys` is what those share).
"""
