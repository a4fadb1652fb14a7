"""dits: Data Influence-oriented Tree Search for training two-agent LLM systems on self-synthesised data."""

__version__ = "0.1.0"
