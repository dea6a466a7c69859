"""Core I/O that every stage uses, one home per job:

* ``atomic``  - atomic writes (temporary beside the file + rename): bytes, JSON, Parquet, ``.npy``, streams;
* ``markers`` - completion markers (written last; "is this piece done, and for this input?");
* ``ranges``  - shard byte ranges: the prefetching :class:`~biomedica_hf.io.ranges.RangeReader` (local and
  remote) and the small synchronous local helpers;
* ``tars``    - byte-reproducible tar members;
* ``gzstream`` - a package (``.tar.gz``) opened as a tar stream, inflated with ISA-L where python-isal is installed;
* ``retry``   - backoff schedule, ``Retry-After``, rate limiter;
* ``xml``     - the safe lxml parser;
* ``sizes``   - byte counts for people (``1.09 MB``, ``2GiB``);
* ``pandas_probe`` - pyarrow's "is pandas importable?" answered without importing it, in commands that never use it.

Nothing here knows about PMC, the build or models; everything above imports from here instead of writing its own.
"""
