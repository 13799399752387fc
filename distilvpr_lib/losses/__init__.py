"""Losses: batch-hard triplet (task), Poincaré maths, relation matrices, distillation losses.

Modules: ``triplet`` (task loss), ``hyperbolic`` (Poincaré ball), ``relations`` (relation
matrices per geometry), ``relational`` (RKD-G and cross-agent losses), ``baselines`` (KD, RKD,
PKT, SP, CC, CSD, AFD, EPC-Net, LSDNet, MKD), ``registry`` (``LOSSES``) and ``distiller``
(``Distiller``, ``PRESETS``). Nothing is imported here, so importing the package is cheap.
"""
