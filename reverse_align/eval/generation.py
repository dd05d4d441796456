"""Greedy generation in the training chat format, and exact-match grading.

Used by the quick checks of the tiny world (learnability, SFT lift) and by the
synthetic benchmarks. Prompts are left-padded and generated in batches.
"""

from __future__ import annotations

from reverse_align.data.schema import Record
from reverse_align.formatting import THINK_MARKER, last_boxed, prompt_messages


def generation_prompt(tokenizer, question: str) -> str:
    """The chat prompt up to and including the assistant's think marker."""
    text = tokenizer.apply_chat_template(prompt_messages(question), tokenize=False, add_generation_prompt=True)
    return text + THINK_MARKER


def greedy_answers(model, tokenizer, questions: list[str], max_new_tokens: int = 128, batch_size: int = 32) -> list[str]:
    import torch

    tokenizer.padding_side = "left"
    outputs: list[str] = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(questions), batch_size):
            prompts = [generation_prompt(tokenizer, q) for q in questions[start : start + batch_size]]
            batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            batch = {k: v.to(model.device) for k, v in batch.items()}
            generated = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new_tokens = generated[:, batch["input_ids"].shape[1] :]
            outputs += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return outputs


def exact_match(answer_text: str, gold: str | None) -> bool:
    boxed = last_boxed(answer_text)
    return boxed is not None and gold is not None and boxed.strip() == str(gold).strip()


def greedy_accuracy(model, tokenizer, records: list[Record], max_new_tokens: int = 128, batch_size: int = 32) -> float:
    """Fraction of records whose generated ``\\boxed{}`` answer equals ``gold`` exactly."""
    if not records:
        return 0.0
    answers = greedy_answers(model, tokenizer, [r.question for r in records], max_new_tokens, batch_size)
    return sum(exact_match(a, r.gold) for a, r in zip(answers, records)) / len(records)
