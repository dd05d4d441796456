"""The model lm-eval generates with: the base model with the evaluated adapter attached.

HF backend: lm-eval's ``HFLM`` over a model object we load, not ``pretrained=<path>, peft=<adapter>``.
Given ``peft=``, HFLM resizes the embeddings to ``len(tokenizer)`` whenever that differs from the
config's vocab size (lm_eval/models/huggingface.py, ``_create_model``): Qwen2.5's config has 152,064
rows and its tokenizer 151,665, so the base would shrink and our adapter's trained ``lm_head``
(modules_to_save, full vocab) would no longer load. The object is loaded exactly as training saved
it (train/common.load_adapter_model), with the preset's dtype and attention.

HFLM decodes with ``skip_special_tokens=True``, which deletes ``<|im_start|>`` and with it the
answer marker the grader splits at. :class:`MarkerKeepingHFLM` changes only that default (the
decoding lm-eval's vLLM backend already uses: ``skip_special_tokens=False``); the stop sequence
(``<|im_end|>``, always in ``until``) still ends each response, so no end or pad token is kept.

vLLM backend (GPUs): lm-eval's ``vllm`` model on the adapter merged into the base. vLLM refuses
adapters with saved modules (our ``lm_head``) and ranks above its limit, so the adapter is merged
rather than passed as a LoRA request. Not exercised here (no GPU on the project's machines).

Both backends decode as eval/decoding.py says: the HF model's ``generation_config`` is replaced by one
holding only its token ids (the merged model for vLLM is saved with it too), and the context is
``eval.max_prompt_tokens`` plus the capped new tokens (:class:`~reverse_align.eval.decoding.GenerationSettings`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from reverse_align.config import Config
from reverse_align.errors import UserError
from reverse_align.eval import decoding
from reverse_align.eval.decoding import GenerationSettings

BACKENDS = ("hf", "vllm")


def _hflm_class():
    from lm_eval.models.huggingface import HFLM

    class MarkerKeepingHFLM(HFLM):
        """HFLM whose responses keep special tokens, so ``<|im_start|>answer`` survives decoding."""

        def tok_decode(self, tokens, skip_special_tokens: bool = False):
            return super().tok_decode(tokens, skip_special_tokens=skip_special_tokens)

    return MarkerKeepingHFLM


def load_peft_or_base(cfg: Config, base_path: str, adapter_dir: str | None):
    """The evaluated model, decoding with no setting of the checkpoint's ``generation_config`` but its token ids."""
    from reverse_align.models import load_model
    from reverse_align.train.common import load_adapter_model

    model = load_adapter_model(cfg, base_path, Path(adapter_dir)) if adapter_dir else load_model(cfg, base_path)
    return decoding.use_clean_generation_config(model.eval())


def build_lm(
    cfg: Config, base_path: str, adapter_dir: str | None, tokenizer=None, settings: GenerationSettings | None = None
):
    """An lm-eval LM for the preset's backend, with the adapter (None: the base model alone).

    ``settings``: the decoding (default :func:`reverse_align.eval.decoding.for_model` on ``base_path``)."""
    e = cfg.eval
    if e.backend not in BACKENDS:
        raise UserError(f"eval.backend {e.backend!r}: expected one of {', '.join(BACKENDS)}")
    settings = settings or decoding.for_model(cfg, base_path)
    max_length = e.max_prompt_tokens + settings.max_new_tokens
    if e.backend == "vllm":
        from lm_eval.models.vllm_causallms import VLLM

        merged = merged_model_dir(cfg, base_path, adapter_dir) if adapter_dir else base_path
        return VLLM(pretrained=merged, dtype=cfg.model.dtype, max_model_len=max_length, batch_size="auto")
    import torch
    from transformers import AutoTokenizer

    model = load_peft_or_base(cfg, base_path, adapter_dir)
    if torch.cuda.is_available():
        model = model.to("cuda")
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(base_path)
    return _hflm_class()(pretrained=model, tokenizer=tokenizer, batch_size=e.batch_size, max_length=max_length)


def merged_model_dir(cfg: Config, base_path: str, adapter_dir: str) -> str:
    """The adapter folded into the base weights, saved with the tokenizer (for vLLM)."""
    from transformers import AutoTokenizer

    target = Path(tempfile.mkdtemp(prefix="reverse-align-merged-"))
    load_peft_or_base(cfg, base_path, adapter_dir).merge_and_unload().save_pretrained(target)
    AutoTokenizer.from_pretrained(base_path).save_pretrained(target)
    return str(target)
