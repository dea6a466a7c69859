"""Core I/O that every stage uses: atomic writes, reproducible tars, shard byte-range reads (local and remote).

Nothing here knows about PMC, the build or models; everything above imports from here instead of writing its own.
"""
