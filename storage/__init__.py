"""Storage: settings, the DuckDB catalog and the on-disk stores it indexes.

Import the modules themselves (``storage.catalog``, ``storage.features``, ...): this package
imports nothing, so a torch- and duckdb-free process (the server) can use ``storage.errors``.
"""
