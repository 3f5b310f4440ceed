"""Artefacts: the versioned documents, code and JSON a session's model writes.

`model` holds the records (an artefact, its versions, what a store keeps of one) and the
limits; `versions` is one session's artefacts: numbering versions without a race and
writing each through the store in the same commit as the event that announces it.
The model's tools for them are agents/artefact_tools.py; the routes read them.
"""
