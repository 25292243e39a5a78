"""Log-mel features and label ids for Whisper, computed once per utterance and kept in memory."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm import tqdm
from transformers import WhisperProcessor

from asrtune.data.audio import SAMPLE_RATE
from asrtune.data.feature_cache import FeatureCache, extract_features
from asrtune.data.manifest import Utterance
from asrtune.errors import AsrtuneError

__all__ = ["prefix_ids", "label_ids", "FeatureDataset", "MAX_LABEL_TOKENS"]

MAX_LABEL_TOKENS = 448  # Whisper's decoder positions


def prefix_ids(processor: WhisperProcessor, *, multilingual: bool, language: str | None, task: str) -> list[int]:
    """Decoder prompt after ``<|startoftranscript|>``: language and task (multilingual only), no-timestamps."""
    tokenizer = processor.tokenizer
    ids = []
    if multilingual:
        lang_id = tokenizer.convert_tokens_to_ids(f"<|{language or 'en'}|>")
        if lang_id is None or lang_id == tokenizer.unk_token_id:
            raise AsrtuneError(f"language {language!r} is not one this Whisper model knows")
        ids += [lang_id, tokenizer.convert_tokens_to_ids(f"<|{task}|>")]
    ids.append(tokenizer.convert_tokens_to_ids("<|notimestamps|>"))
    return ids


def label_ids(processor: WhisperProcessor, text: str, prefix: list[int]) -> list[int]:
    """Training targets: prefix, the text (with Whisper's leading space), end-of-text.

    ``<|startoftranscript|>`` is left out: the model prepends it when shifting labels right.
    """
    tokenizer = processor.tokenizer
    text_ids = tokenizer.encode(" " + text.strip(), add_special_tokens=False)
    return prefix + text_ids + [tokenizer.eos_token_id]


class FeatureDataset(torch.utils.data.Dataset):
    """Utterances with their log-mel features (n_mels, 3000) and label ids, computed once.

    Args:
        utterances: the rows.
        processor: the model's processor (its feature extractor fixes n_mels).
        multilingual: whether the model takes language and task tokens.
        language: default language for rows without one.
        task: transcribe or translate.
        cache: an on-disk feature cache to read from and fill (None: always extract).

    Attributes:
        durations: each utterance's audio length in seconds (for duration-bucketed batches).
        valid_frames: each utterance's log-mel frames before the 30 s padding (for a shorter encoder input).
    """

    def __init__(self, utterances: Sequence[Utterance], processor: WhisperProcessor, *, multilingual: bool,
                 language: str | None = None, task: str = "transcribe", progress: bool = True,
                 desc: str = "features", cache: FeatureCache | None = None) -> None:
        self.utterances = list(utterances)
        self.processor = processor
        extractor = processor.feature_extractor
        self.features: list[torch.Tensor] = []
        self.labels: list[list[int]] = []
        self.durations: list[float] = []
        self.valid_frames: list[int] = []
        for utterance in tqdm(self.utterances, desc=desc, disable=not progress, unit="utt"):
            features, n_samples = extract_features(utterance.audio, extractor, cache)
            self.features.append(torch.from_numpy(features))
            self.durations.append(n_samples / SAMPLE_RATE)
            self.valid_frames.append(min(-(-n_samples // extractor.hop_length), features.shape[-1]))
            prefix = prefix_ids(processor, multilingual=multilingual, language=utterance.language or language,
                                task=task)
            labels = label_ids(processor, utterance.text, prefix)
            if len(labels) + 1 > MAX_LABEL_TOKENS:
                raise AsrtuneError(f"{utterance.id}: transcript is {len(labels)} tokens, more than Whisper's "
                                   f"decoder holds ({MAX_LABEL_TOKENS}); `asrtune prepare` drops such rows")
            self.labels.append(labels)

    def head(self, count: int) -> FeatureDataset:
        """The first ``count`` utterances, sharing this dataset's features."""
        subset = object.__new__(FeatureDataset)
        subset.processor = self.processor
        subset.utterances = self.utterances[:count]
        subset.features = self.features[:count]
        subset.labels = self.labels[:count]
        subset.durations = self.durations[:count]
        subset.valid_frames = self.valid_frames[:count]
        return subset

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> dict:
        return {"input_features": self.features[index], "labels": self.labels[index], "index": index,
                "frames": self.valid_frames[index]}


def collate(items: list[dict], pad_to_multiple_of: int = 1) -> dict[str, torch.Tensor]:
    """Stack features (B, n_mels, 3000); pad labels (B, L) with -100, which the loss ignores.

    ``pad_to_multiple_of`` rounds L up (as transformers' collators do): the decoder then sees a few
    batch shapes instead of one per label length, and each new shape costs kernel selection (oneDNN
    builds its bf16/AMX kernels per shape). Exact: the loss ignores -100 and the decoder is causal,
    so the extra positions change no real position. ``frames`` (B,) holds each item's log-mel frames
    before the padding.
    """
    longest = max(len(item["labels"]) for item in items)
    width = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    for row, item in enumerate(items):
        labels[row, : len(item["labels"])] = torch.tensor(item["labels"], dtype=torch.long)
    return {
        "input_features": torch.stack([item["input_features"] for item in items]),
        "labels": labels,
        "index": torch.tensor([item["index"] for item in items], dtype=torch.long),
        "frames": torch.tensor([item["frames"] for item in items], dtype=torch.long),
    }


__all__.append("collate")
