"""The installer side (end-user PCs): the local store, fetching, bundles, trust, the one installer
pipeline (``pipeline``) and ``load()`` (``loader``)."""
