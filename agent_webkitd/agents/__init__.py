"""Agents: the Claude Code CLI processes and what runs beside them.

`agent` owns one CLI process through one ClaudeSDKClient (start, serve, stop, crash,
restart intensity) and knows nothing of sessions beyond the small `Host` it serves;
`slots` bounds how many run at once; `warmpool` keeps CLIs started ahead of the creates
that take them; `toolsets`, `artefact_tools` and `genui` are the daemon's own in-process
MCP servers every CLI gets. Agents are untrusted: `sandbox` starts every CLI in
bubblewrap (`sandbox_check` probes one for operators), `gateway` is the one way they
reach the model, with the real credential added outside; `workspaces` are the folders
each session's agent works and keeps its transcripts in, and `workspace_files` reads and
writes them for clients without ever leaving them.
"""
