"""The embedded store: one SQLite file holds every session, event, transcript and
artefact (`db`: the file, its schema and its writer thread; `store`: the Store;
`transcripts`: the SDK's SessionStore on the same file)."""
