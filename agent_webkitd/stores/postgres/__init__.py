"""The Postgres store: durable sessions shared by several hosts, with leases and failover
(`store`: the Store and session ownership; `commit`: how a batch is written;
`transcripts`: the SDK's SessionStore; `migrations`: the schema; `admin`: the migrate and
prune commands)."""
