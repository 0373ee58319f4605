"""The embedded example: models generated in code and the farm-to-PC demo (``python -m rtxpack.demo``).

Not part of the library: nothing in ``core``, ``backends``, ``installer`` or ``farm`` imports it.
"""
