"""The data layer: raw logs in, tensor batches out.

Readers (one per format) -> one canonical interaction log -> vocabularies (the one id rule) -> leakage-free
splits -> typed batches made by slicing tensors (``batches``), and the ``InteractionDataModule`` that joins
them for Lightning. It imports only the shared helpers (``twotower.errors``, ``twotower.files``): never the
model, the run directory or serving.
"""
