"""``asrtune export RUN --to hf`` of an LLM-family run: plain transformers loads it and transcribes as asrtune does.

A run of ``bundled:llm-asr-tiny`` (projector + LoRA, two steps on four clips) is exported; the folder loads with
``Qwen2AudioForConditionalGeneration`` and ``AutoProcessor`` alone, and the prompt the export records, fed with
each clip through the processor to ``generate``, gives the text ``asrtune evaluate`` gives for the run.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import espeak_or_skip

from asrtune.api import evaluate
from asrtune.cli import main
from asrtune.config import DataConfig, LoopConfig, RunConfig
from asrtune.data.audio import load_audio
from asrtune.data.manifest import read_manifest
from asrtune.data.synth import SynthSettings, synthesise_lines
from asrtune.models.llm_asr_tiny import aligned_record
from asrtune.training.recipe import train

pytestmark = pytest.mark.integration

TEXTS = ["The weather is nice today.", "Please close the window.", "My brother plays the guitar.",
         "We walked along the river."]


def test_the_exported_run_transcribes_in_plain_transformers_as_in_asrtune(tmp_path, all_cores):
    espeak_or_skip()
    if aligned_record() is None:
        pytest.fail("this asrtune ships no aligned weights for bundled:llm-asr-tiny")
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    clips = synthesise_lines(TEXTS, tmp_path / "clips", language="en", progress=False,
                             settings=SynthSettings(voices=("en-us+m3",)))
    config = RunConfig(model="bundled:llm-asr-tiny", strategy="projector+lora:r=8,alpha=32", seed=0,
                       data=DataConfig(train=str(clips), eval=str(clips)),
                       loop=LoopConfig(max_steps=2, batch_size=2, eval_every=2, eval_at_start=False,
                                       num_workers=0, mixed_precision="no", max_new_tokens=32))
    train(config, tmp_path / "run", progress=False, final_evaluation=False)
    ours = {row["id"]: row["hypothesis"] for row in
            evaluate(str(tmp_path / "run"), clips, progress=False, max_new_tokens=32)["predictions"]}

    assert main(["export", str(tmp_path / "run"), "--to", "hf", "--out", str(tmp_path / "hf")]) == 0
    model, info = Qwen2AudioForConditionalGeneration.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert all(not info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    processor = AutoProcessor.from_pretrained(tmp_path / "hf")
    prompt = json.loads((tmp_path / "hf" / "asrtune_export.json").read_text())["prompt"]
    theirs = {}
    for row in read_manifest(clips):
        inputs = processor(text=prompt, audio=load_audio(row.audio), sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            out = model.eval().generate(**inputs, max_new_tokens=32, do_sample=False)
        theirs[row.id] = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:],
                                                   skip_special_tokens=True)[0].strip()
    assert any(text for text in theirs.values())
    assert theirs == ours
