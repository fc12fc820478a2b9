"""Shared layer of every package and tool: checkpoint I/O, atomic writes, one-line user errors, the CLI wrapper."""
