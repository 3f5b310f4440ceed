"""Sessions: the conversations the daemon hosts.

`supervisor` creates, finds, resumes, hibernates, evicts and drains them and enforces
capacity; `session` is one conversation (its state and events, and the lifecycle of the
CLI serving it); `spec` says what a session is built from and how its CLI starts;
`inputs` is what each client message does to it; `turns` is its inbound queue, one query
at a time; `bridge` turns SDK messages into wire events and `can_use_tool` into pending
`decisions` (first reply wins); `eventlog` assigns seqs and keeps the ring subscribers
read; `history` reads a conversation back from its transcript, which `transcripts` files
where a resumed or forked conversation's new CLI finds it; `resumes` finds the
conversation a create continues; `cwds` checks a client-chosen cwd; `leftovers` settles
what a host that went away left open.
"""
