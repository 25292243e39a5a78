"""Data: manifests, audio decoding, synthesis, features and batching."""
