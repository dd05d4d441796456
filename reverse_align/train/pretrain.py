"""The `pretrain` stage: the tiny base model, built from scratch on the CPU.

A Qwen2-architecture causal LM with a byte-level BPE tokenizer trained here
(digits split one per token, as Qwen does) and a Qwen-style chat template.
It is pretrained on the world's single arithmetic steps, forward and undone,
chained into walks (some repeated, which grows the heads that copy), and on
worked forward examples in the world's words ("Start with 7. Subtract 1, then
add 4." and its steps) for problems outside the world's train, test and
transfer sets: an instruct LLM reads the language of its tasks before any SFT,
and so does this one. No row gives a held-out answer away: one that contains a
held-out chain (forward or undone) or opens with a held-out plan is drawn again
(``synthetic.HeldOut``; the old stream gave away 146 of the 200 test problems).
It never sees a question sentence, the chat format, the answer sentence or a
reverse problem: those are what SFT has to teach. Saved in
Hugging Face format and registered, so later stages load it exactly as they
would load Qwen2.5-7B-Instruct.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from pathlib import Path

from reverse_align import tracking
from reverse_align.config import Config
from reverse_align.data import synthetic
from reverse_align.errors import UserError
from reverse_align.models import TAG_FINGERPRINT, TINY_BASE, find_tiny_base, tiny_fingerprint

STAGE = "pretrain"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2.5's template without its default system prompt.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def tokenizer_corpus(cfg: Config) -> list[str]:
    """Text the tokenizer's merges are learned from: the world's vocabulary, both directions."""
    world = synthetic.make_world(cfg.synthetic, cfg.data.seed)
    texts = synthetic.pretraining_facts(cfg.synthetic)
    for direction in ("forward", "reverse"):
        for record in world.records("train", direction):
            texts += [record.question, record.thinking, record.attempt]
    # The transfer family's wording (on training problems: merges only, no held-out answer).
    texts += [synthetic.transfer_question(p, 1) for p in world.train]
    texts += ["think", "answer", "user", "assistant", "system"]
    return texts


def build_tokenizer(cfg: Config):
    """Byte-level BPE trained locally; deterministic for a given corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.pretrain.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(tokenizer_corpus(cfg), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        model_max_length=cfg.pretrain.max_position_embeddings,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(cfg: Config, tokenizer):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    p = cfg.pretrain
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=p.hidden_size,
        intermediate_size=p.intermediate_size,
        num_hidden_layers=p.num_layers,
        num_attention_heads=p.num_heads,
        num_key_value_heads=p.num_kv_heads,
        max_position_embeddings=p.max_position_embeddings,
        # Untied, as in Qwen2.5-7B/14B, so lm_head is its own LoRA target.
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(cfg.pretrain.seed)
    return Qwen2ForCausalLM(config)


def chat_exchange(rng: random.Random, cfg: Config) -> str:
    """One chat turn pair in the template SFT uses: the user writes a single step's operands in symbols, the
    assistant writes the step with its result and ends its turn. Direction-neutral (both directions' traces are
    made of such steps) and no question sentence, s1 marker or multi-step problem: it teaches the chat wrapper's
    tokens and copying numbers out of the user's turn, which an instruct base model knows before SFT."""
    value = rng.randint(0, cfg.synthetic.max_value)
    op, operand = rng.choice(synthetic.valid_steps(value, cfg.synthetic))
    return (
        f"<|im_start|>user\n{value} {op} {operand}<|im_end|>\n"
        f"<|im_start|>assistant\n{synthetic.fact(value, op, operand)}<|im_end|>\n"
    )


def pretraining_rows(cfg: Config):
    """Endless rows of text, each a list of pieces: a random walk of `facts_per_sequence` chained steps
    (one piece per step) or worked examples (one piece each). The stream `pretrain` trains on, replayable
    without a tokenizer (``synthetic.leakage`` checks it)."""
    p = cfg.pretrain
    rng = random.Random(cfg.pretrain.seed)
    world = synthetic.make_world(cfg.synthetic, cfg.data.seed)
    world_problems = set(world.train) | set(world.test) | {t.problem for t in world.transfer}
    # Held-out answers are reserved before any document is drawn: a row that would give one away
    # (a test or transfer chain inside a walk, or opening a worked example) is drawn again.
    guard = synthetic.HeldOut(world.held_out())
    while True:
        kind = rng.random()
        if kind < p.narrated_fraction:
            # About as many lines as a walk: a worked example is its plan and 2-3 steps.
            row = [
                synthetic.worked_example(rng, cfg.synthetic, world_problems, guard) + "\n"
                for _ in range(max(1, p.facts_per_sequence // 4))
            ]
        elif kind < p.narrated_fraction + p.chat_fraction:
            row = [chat_exchange(rng, cfg) for _ in range(max(1, p.facts_per_sequence // 2))]
        else:
            walk = synthetic.random_walk(rng, cfg.synthetic, p.facts_per_sequence)
            if rng.random() < p.copy_fraction:
                # A walk seen twice: the second copy is predictable only by looking back, which
                # grows the attention heads that later copy operands out of a question.
                half = walk[: max(1, len(walk) // 2)]
                walk = half + half
            row = [f + "\n" for f in walk]
        if not guard.leaks("".join(row)):
            yield row


def pretraining_documents(cfg: Config, steps: int | None = None):
    """The text of every row `pretrain` trains on (``steps`` batches; default the preset's)."""
    rows = pretraining_rows(cfg)
    for _ in range((cfg.pretrain.steps if steps is None else steps) * cfg.pretrain.batch_size):
        yield "".join(next(rows))


def fact_batches(cfg: Config, tokenizer):
    """Endless (input_ids, labels) batches of `pretraining_rows`, right-padded."""
    import torch

    encoded: dict[str, list[int]] = {}

    def encode(piece: str) -> list[int]:
        if piece not in encoded:
            encoded[piece] = tokenizer(piece, add_special_tokens=False)["input_ids"]
        return encoded[piece]

    rows = pretraining_rows(cfg)
    while True:
        batch = [[t for piece in next(rows) for t in encode(piece)] for _ in range(cfg.pretrain.batch_size)]
        width = max(len(r) for r in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        for i, r in enumerate(batch):
            input_ids[i, : len(r)] = torch.tensor(r)
            labels[i, : len(r)] = torch.tensor(r)
        yield input_ids, labels


def pretrain(cfg: Config, model, tokenizer, log_every: int = 50) -> dict:
    import mlflow
    import torch
    from tqdm.auto import tqdm

    p = cfg.pretrain
    facts = synthetic.pretraining_facts(cfg.synthetic)
    optimizer = torch.optim.AdamW(model.parameters(), lr=p.learning_rate, betas=(0.9, 0.95), weight_decay=0.01)

    def lr_at(step: int) -> float:
        if step < p.warmup_steps:
            return (step + 1) / p.warmup_steps
        progress = (step - p.warmup_steps) / max(1, p.steps - p.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    model.train()
    batches = fact_batches(cfg, tokenizer)
    started = time.perf_counter()
    loss_value = float("nan")
    for step in tqdm(range(p.steps), desc="pretrain", mininterval=2):
        input_ids, labels = next(batches)
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % log_every == 0 or step == p.steps - 1:
            loss_value = loss.item()  # .item() syncs; only on logged steps
            mlflow.log_metrics({"pretrain/loss": loss_value, "pretrain/lr": scheduler.get_last_lr()[0]}, step=step)
    seconds = time.perf_counter() - started
    model.eval()
    return {"pretrain/final_loss": loss_value, "pretrain/seconds": seconds, "pretrain/facts": len(facts)}


def fact_accuracy(model, tokenizer, facts: list[str], limit: int = 200) -> float:
    """Greedy completion of "a op b =" to the right result: did pretraining teach the steps?"""
    import torch

    facts = facts[:: max(1, len(facts) // limit)][:limit]
    correct = 0
    with torch.no_grad():
        for f in facts:
            prompt, answer = f.rsplit("= ", 1)
            ids = tokenizer(prompt + "= ", add_special_tokens=False, return_tensors="pt")["input_ids"]
            out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            text = tokenizer.decode(out[0, ids.shape[1] :])
            correct += text.split("\n")[0].strip() == answer
    return correct / len(facts)


def run_pretrain(cfg: Config, force: str = "false") -> str | None:
    """Build, pretrain, log and register the tiny base model; reuse a registered one."""
    import mlflow

    if cfg.model.name != TINY_BASE:
        raise UserError(f"pretrain builds the tiny base model only; preset {cfg.preset!r} uses {cfg.model.name}")
    tracking.setup()
    existing = find_tiny_base(cfg)
    rebuild = str(force).lower() in ("1", "true", "yes")
    with tracking.stage_run(STAGE, cfg) as run:
        if existing is not None and not rebuild:
            mlflow.set_tag("reverse_align.reused", f"{existing.name}/{existing.version}")
            mlflow.set_tag(tracking.tag_upstream(STAGE), existing.run_id)
            print(f"reusing {existing.name} version {existing.version} (run {existing.run_id})")
            return existing.run_id
        tokenizer = build_tokenizer(cfg)
        model = build_model(cfg, tokenizer)
        n_params = sum(p.numel() for p in model.parameters())
        mlflow.log_params({"pretrain.n_parameters": n_params, "pretrain.vocab_actual": len(tokenizer)})
        metrics = pretrain(cfg, model, tokenizer)
        metrics["pretrain/fact_accuracy"] = fact_accuracy(model, tokenizer, synthetic.pretraining_facts(cfg.synthetic))
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / tracking.ARTIFACT_BASE_MODEL
            model.save_pretrained(out, safe_serialization=True)
            tokenizer.save_pretrained(out)
            mlflow.log_artifacts(str(out), artifact_path=tracking.ARTIFACT_BASE_MODEL)
        client = mlflow.MlflowClient()
        try:
            client.create_registered_model(cfg.pretrain.registered_model)
        except mlflow.exceptions.MlflowException:
            pass  # already exists
        version = client.create_model_version(
            name=cfg.pretrain.registered_model,
            source=f"{run.info.artifact_uri}/{tracking.ARTIFACT_BASE_MODEL}",
            run_id=run.info.run_id,
            tags={TAG_FINGERPRINT: tiny_fingerprint(cfg), tracking.TAG_PRESET: cfg.preset},
        )
        mlflow.set_tag("reverse_align.registered", f"{version.name}/{version.version}")
        print(
            f"pretrained {n_params:,} parameters in {metrics['pretrain/seconds']:.0f}s, "
            f"loss {metrics['pretrain/final_loss']:.3f}, fact accuracy {metrics['pretrain/fact_accuracy']:.2f}; "
            f"registered {version.name} version {version.version}"
        )
        return run.info.run_id
