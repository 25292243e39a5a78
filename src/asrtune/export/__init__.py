"""Deploy a fine-tuned model: merged Hugging Face folders (``merge``) and CTranslate2 / faster-whisper folders
(``ct2``, checked with ``ct2_runtime``)."""
