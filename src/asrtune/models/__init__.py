"""Models: one file per family (``family``, ``whisper``, ``qwen2_audio``, ``qwen3_asr``), where pretrained weights
come from (``bundled``, ``ct2``, ``llm_asr_tiny``) and loading any source but a run folder (``load``).

Nothing here imports from training, evaluation, analysis or commands (the import-linter contracts in
``pyproject.toml`` hold the layers).
"""
