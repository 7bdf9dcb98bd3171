"""The `evaluate` module of MF²'s metrics (`mf2_metric.py`); load it with `evaluate.load(<this folder>)`.

This file only makes the folder part of the installed package; it imports nothing.
"""
