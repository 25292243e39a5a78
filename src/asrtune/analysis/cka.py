"""Layer-wise linear CKA between two Whisper models' representations of the same utterances.

Seed 002 (Fig. 1) compares each encoder layer before and after fine-tuning with CKA: bottom
layers stay near 1.0, top layers drift. Linear CKA (Kornblith et al., 2019) of two representations
of the same n examples, X (n, p) and Y (n, q), centred column-wise, is

    CKA(X, Y) = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F * ||Yc^T Yc||_F)

It is 1 for identical representations and invariant to orthogonal transforms and isotropic
scaling of either side. The examples are encoder frames: Whisper pads every input to 30 s, and only
the frames that hold the utterance (``ceil(samples / hop / 2)`` of them) are used, never the padding.
The sums are accumulated in float64 over batches, so any number of frames fits in O(p * q) memory.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from tqdm import tqdm

from asrtune.data.audio import SAMPLE_RATE
from asrtune.data.features import FeatureDataset
from asrtune.errors import AsrtuneError
from asrtune.models.load import LoadedModel
from asrtune.models.whisper import whisper_core

__all__ = ["linear_cka", "CKAAccumulator", "speech_frames", "CKAResult", "layer_cka", "sample_indices"]


def _centred_gram_norms(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    return (y.T @ x).square().sum(), torch.linalg.matrix_norm(x.T @ x), torch.linalg.matrix_norm(y.T @ y)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two representations of the same examples.

    Args:
        x: (N, P) one representation, a row per example.
        y: (N, Q) the other, rows in the same order.

    Returns:
        A value in [0, 1]; 1.0 when ``y`` is ``x`` up to an orthogonal map, scale and shift.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"expected (N, P) and (N, Q) with the same N, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    cross, norm_x, norm_y = _centred_gram_norms(x.double(), y.double())
    return float(cross / (norm_x * norm_y))


@dataclass
class CKAAccumulator:
    """Streaming linear CKA: add (x, y) batches of rows, read :meth:`value` at any time.

    Keeps ``n``, the column sums and the raw products X^T X (P, P), Y^T Y (Q, Q), Y^T X (Q, P), all
    float64; centring is applied at the end (``Xc^T Yc = X^T Y - n mean_x mean_y^T``).
    """

    n: int = 0
    sum_x: torch.Tensor | None = None
    sum_y: torch.Tensor | None = None
    xx: torch.Tensor | None = None
    yy: torch.Tensor | None = None
    yx: torch.Tensor | None = None

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add rows: x (M, P) and y (M, Q), the same M examples."""
        x, y = x.detach().double().cpu(), y.detach().double().cpu()
        if x.shape[0] != y.shape[0]:
            raise ValueError("x and y must have the same number of rows")
        if self.sum_x is None:
            self.sum_x, self.sum_y = x.new_zeros(x.shape[1]), y.new_zeros(y.shape[1])
            self.xx, self.yy = x.new_zeros(x.shape[1], x.shape[1]), y.new_zeros(y.shape[1], y.shape[1])
            self.yx = x.new_zeros(y.shape[1], x.shape[1])
        self.n += x.shape[0]
        self.sum_x += x.sum(0)
        self.sum_y += y.sum(0)
        self.xx += x.T @ x
        self.yy += y.T @ y
        self.yx += y.T @ x

    def value(self) -> float:
        if self.n < 2:
            raise ValueError("CKA needs at least two examples")
        mean_x, mean_y = self.sum_x / self.n, self.sum_y / self.n
        xx = self.xx - self.n * torch.outer(mean_x, mean_x)
        yy = self.yy - self.n * torch.outer(mean_y, mean_y)
        yx = self.yx - self.n * torch.outer(mean_y, mean_x)
        return float(yx.square().sum() / (torch.linalg.matrix_norm(xx) * torch.linalg.matrix_norm(yy)))


def speech_frames(n_samples: int, hop_length: int, positions: int) -> int:
    """Encoder frames that cover ``n_samples`` of audio: the mel hop, then the stride-2 convolution."""
    return max(1, min(positions, math.ceil(n_samples / hop_length / 2)))


@dataclass(frozen=True, kw_only=True)
class CKAResult:
    """CKA per layer (index 0 = lowest) and what it was computed over."""

    encoder: dict[int, float]
    decoder: dict[int, float] | None = None
    utterances: int = 0
    frames: int = 0
    tokens: int = 0

    def as_json(self) -> dict:
        """``{"encoder": {"0": 1.0, ...}}`` (+ ``"decoder"`` when computed)."""
        out = {"encoder": {str(k): v for k, v in self.encoder.items()}}
        if self.decoder is not None:
            out["decoder"] = {str(k): v for k, v in self.decoder.items()}
        return out


def sample_indices(n: int, count: int | None, seed: int = 0) -> list[int]:
    """``count`` of ``range(n)`` drawn without replacement, sorted (all when count is None or >= n)."""
    if count is None or count >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), count))


class _Capture:
    """Forward hooks that keep each layer's output (after any hook a strategy put there, e.g. adapters)."""

    def __init__(self, layers: torch.nn.ModuleList) -> None:
        self.outputs: list[torch.Tensor | None] = [None] * len(layers)
        self.handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(layers)]

    def _hook(self, index: int):
        def keep(_module, _inputs, output):
            self.outputs[index] = output[0] if isinstance(output, tuple) else output

        return keep

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def _layer_outputs(
    loaded: LoadedModel, features: torch.Tensor, decoder_ids: torch.Tensor | None
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Encoder (and decoder, teacher-forced) layer outputs: each (B, T, d_model)."""
    core = whisper_core(loaded.model)
    parameter = next(loaded.model.parameters())
    features = features.to(parameter.device, parameter.dtype)
    encoder_hooks = _Capture(core.encoder.layers)
    decoder_hooks = _Capture(core.decoder.layers) if decoder_ids is not None else None
    try:
        if decoder_ids is None:
            core.encoder(features)
        else:
            loaded.model(input_features=features, decoder_input_ids=decoder_ids.to(parameter.device))
    finally:
        encoder_hooks.remove()
        if decoder_hooks:
            decoder_hooks.remove()
    return encoder_hooks.outputs, decoder_hooks.outputs if decoder_hooks else None


def _decoder_inputs(
    dataset: FeatureDataset, indices: list[int], start_id: int, pad_id: int
) -> tuple[torch.Tensor, list[int]]:
    """Teacher-forcing inputs (B, L): start token + labels without the last; and each row's length."""
    rows = [[start_id] + list(dataset.labels[i][:-1]) for i in indices]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = torch.tensor(row)
    return ids, [len(r) for r in rows]


def layer_cka(
    base: LoadedModel,
    tuned: LoadedModel,
    dataset: FeatureDataset,
    *,
    decoder: bool = False,
    batch_size: int = 8,
    utterances: int | None = 100,
    seed: int = 0,
    progress: bool = True,
) -> CKAResult:
    """Linear CKA per layer between two models on the same utterances (speech frames only).

    Args:
        base, tuned: two Whisper models with the same number of layers (e.g. before / after fine-tuning).
        dataset: utterances with features from ``base``'s extractor.
        decoder: also compare decoder layers, both teacher-forced on the reference labels.
        batch_size: utterances per forward pass.
        utterances: a seeded random sample of this many (the paper: 100); None for all.
        seed: the sample's seed.
    """
    base_core, tuned_core = whisper_core(base.model), whisper_core(tuned.model)
    for side in ("encoder", "decoder"):
        if len(getattr(base_core, side).layers) != len(getattr(tuned_core, side).layers):
            raise AsrtuneError(f"CKA pairs layers: the models' {side}s have different numbers of layers")
    extractor = base.processor.feature_extractor
    positions = base_core.config.max_source_positions
    chosen = sample_indices(len(dataset), utterances, seed)
    encoder_acc = [CKAAccumulator() for _ in base_core.encoder.layers]
    decoder_acc = [CKAAccumulator() for _ in base_core.decoder.layers] if decoder else None
    start_id = base.model.generation_config.decoder_start_token_id
    pad_id = base.model.generation_config.pad_token_id
    frames = tokens = 0
    was_training = (base.model.training, tuned.model.training)
    base.model.eval(), tuned.model.eval()
    bar = tqdm(total=len(chosen), desc="cka", unit="utt", disable=not progress)
    for start in range(0, len(chosen), batch_size):
        batch = chosen[start : start + batch_size]
        features = torch.stack([dataset.features[i] for i in batch])
        decoder_ids, lengths = _decoder_inputs(dataset, batch, start_id, pad_id) if decoder else (None, [])
        base_enc, base_dec = _layer_outputs(base, features, decoder_ids)
        tuned_enc, tuned_dec = _layer_outputs(tuned, features, decoder_ids)
        keep = [
            speech_frames(round(dataset.durations[i] * SAMPLE_RATE), extractor.hop_length, positions)
            for i in batch
        ]
        frames += sum(keep)
        for layer, accumulator in enumerate(encoder_acc):
            accumulator.update(
                torch.cat([base_enc[layer][b, :k] for b, k in enumerate(keep)]),
                torch.cat([tuned_enc[layer][b, :k] for b, k in enumerate(keep)]),
            )
        if decoder_acc is not None:
            tokens += sum(lengths)
            for layer, accumulator in enumerate(decoder_acc):
                accumulator.update(
                    torch.cat([base_dec[layer][b, :k] for b, k in enumerate(lengths)]),
                    torch.cat([tuned_dec[layer][b, :k] for b, k in enumerate(lengths)]),
                )
        bar.update(len(batch))
    bar.close()
    base.model.train(was_training[0]), tuned.model.train(was_training[1])
    return CKAResult(
        encoder={i: a.value() for i, a in enumerate(encoder_acc)},
        decoder={i: a.value() for i, a in enumerate(decoder_acc)} if decoder_acc else None,
        utterances=len(chosen),
        frames=frames,
        tokens=tokens,
    )
