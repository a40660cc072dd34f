"""The serving layer: a finished run directory answering queries.

``Retriever`` (the Python API), the ``catalogue`` of items at serving time, ``result`` (one answer), ``maps``
(2-D pictures of the vectors) and the HTTP ``service``. It reads exported artifacts through
``twotower.run`` and searches through ``twotower.index``; it never imports the LightningModule or training
(a tower that embeds new users or items is rebuilt from the checkpoint by ``twotower.model.towers``).
"""
