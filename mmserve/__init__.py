"""mmserve: a multi-model inference engine (model table, lifecycle, families, routes)."""

__version__ = "0.1.0"
