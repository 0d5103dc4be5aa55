"""Activation calibration, perplexity and pictures, built on the architecture tables.

``calibrate`` runs a checkpoint through stock `transformers` modules one decoder layer at a
time and records raw per-unit activation statistics of every prunable space (a scores file);
``plan``/``run --method activation`` rank units by them; ``eval`` measures perplexity the same
streamed way.  torch, transformers and accelerate are needed here (the ``calibrate`` extra);
:mod:`scorefile` alone is numpy-only, so ``plan``/``run`` read a scores file without torch.
"""
