"""The model layer: what a two-tower model is, without the story of a training run.

Towers (``towers``), the score (``scoring``), the losses behind their protocols (``losses``), optimizers
(``optim``), the full-ranking metrics (``metrics``) and the ``TwoTowerModel`` LightningModule that joins them
(``module``). It imports the data layer (for the typed batches and feature specs) and the shared helpers;
never training, the run directory or serving.
"""
