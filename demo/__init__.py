"""The demo chain: `python tools/demo.py` / `make demo` (demo.chain)."""
