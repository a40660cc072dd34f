"""Hydra configuration tree, installed as ``twotower.conf``."""
