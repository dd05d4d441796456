"""A plain full fine-tune under a wall-clock budget: the tiny world's learnability check.

Not a stage (LoRA SFT is :mod:`reverse_align.train.sft`): this shows that the
tiny base model, taught forward problems in the chat format with the loss on
the assistant turn only, learns to solve held-out ones within minutes. It
guards the synthetic world and the pretraining against drifting into something
too hard (or too easy) to show learning.
"""

from __future__ import annotations

import random
import time

from reverse_align.data.schema import Record
from reverse_align.formatting import chat_messages, prompt_messages


def tokenize_example(tokenizer, record: Record) -> tuple[list[int], list[int]]:
    """Input ids and labels with the prompt masked (-100): loss on the assistant turn only."""
    prompt = tokenizer.apply_chat_template(prompt_messages(record.question), tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(chat_messages(record), tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids, "chat template is not prefix-stable"
    labels = [-100] * len(prompt_ids) + full_ids[len(prompt_ids) :]
    return full_ids, labels


def finetune(model, tokenizer, records: list[Record], seconds: float, lr: float = 1e-3, batch_size: int = 16, seed: int = 0) -> dict:
    """Train until the time budget is spent; returns steps, examples seen and final loss."""
    import torch

    examples = [tokenize_example(tokenizer, r) for r in records]
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    started = time.perf_counter()
    steps = seen = 0
    loss_value = float("nan")
    order: list[int] = []
    while time.perf_counter() - started < seconds:
        if len(order) < batch_size:
            order += rng.sample(range(len(examples)), len(examples))
        batch = [examples[i] for i in order[:batch_size]]
        del order[:batch_size]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (ids, lab) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(lab)] = torch.tensor(lab)
            attention[row, : len(ids)] = 1
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps += 1
        seen += len(batch)
        loss_value = loss.item()
    model.eval()
    return {"steps": steps, "examples": seen, "loss": loss_value, "seconds": time.perf_counter() - started}
