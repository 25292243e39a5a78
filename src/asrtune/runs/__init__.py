"""Run folders: their layout (``layout``), the trainable weights they hold (``weights``) and loading a run's model
(``load``: its base model, or the run ``init_from`` names, its strategy, its checkpoint).

This sits above ``models`` (which loads pretrained models only) and ``strategies``, and below ``training``
(which writes runs) and everything that reads them (evaluation commands, export, transcription).
"""
