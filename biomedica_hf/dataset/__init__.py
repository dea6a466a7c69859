"""The published dataset: read it (``loader``), describe it (``card``, ``tables``), check it (``verify``),
publish it (``hub``) and enrich its article metadata from PubMed (``enrich``)."""
