"""agent-webkitd: a daemon hosting Claude Agent SDK sessions over the agent-webkit wire protocol 1.0."""

__version__ = "0.1.0"
