"""ccsvi-cds: decision support against venous angioplasty/stenting for CCSVI in multiple sclerosis."""

__version__ = "0.1.0"
