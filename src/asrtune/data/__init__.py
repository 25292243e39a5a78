"""Data: corpus formats, cleaning (``asrtune prepare``), manifests, audio, augmentation, features, batching."""
