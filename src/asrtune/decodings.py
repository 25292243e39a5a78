"""How asrtune decodes when it scores a model (torch-free: the config and the command line read it).

* ``greedy``: the model's most likely token at each step (``--num-beams N``: beam search), with the
  repetition guard; what training evaluations have always used.
* ``deploy``: what faster-whisper's ``transcribe`` does with its defaults (5 beams, temperature fallback
  0.0 to 1.0 by 0.2, compression-ratio threshold 2.4, log-probability threshold -1, no-speech threshold 0.6;
  :mod:`asrtune.models.whisper_deploy`), so the WER is the one the deployed model scores. Whisper only.
"""

from __future__ import annotations

__all__ = ["DECODINGS"]

DECODINGS = ("greedy", "deploy")
