"""Train the bundled ``toy-facts`` model: a tiny GPT-2 that has memorised synthetic facts.

    "Ada Moreno lives in" -> " Oslo"        "the sport of Hugo van Rossi is" -> " chess"

The facts come from :func:`jaxattr.zoo.facts.facts_examples`: 96 people (two- and three-token
names) with a city, a job and a sport, each asked with three paraphrases. Two paraphrases per
fact are trained, the third is held out. The loss is on the answer token only; the answer is
never in the prompt, so the model must store the facts in its weights — the setting of causal
tracing (``examples/factual_knowledge.py``). Runs in a few minutes on 2 CPU cores,
deterministic given ``--seed`` on CPU::

    python examples/train_toy_facts.py --out /tmp/toy-facts
    python examples/train_toy_facts.py --out jaxattr/zoo/toy-facts   # refresh the bundled copy
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from jaxattr.zoo import facts, tasks

MAX_LEN = 12          # <s> + at most 8 prompt words + answer, right-padded


def encode(tok, examples):
    """ids ``[N, MAX_LEN]`` (prompt + answer, right-padded) and the index of the last prompt
    token (which predicts the answer)."""
    ids = np.full((len(examples), MAX_LEN), tok.pad_token_id, np.int32)
    last = np.zeros((len(examples),), np.int32)
    for i, e in enumerate(examples):
        row = tok.convert_tokens_to_ids(e["tokens"] + [e["answer"]])
        ids[i, :len(row)] = row
        last[i] = len(row) - 2
    return ids, last


def accuracy(predict, params, tok, examples):
    """Greedy next token after the prompt = the answer."""
    ids, last = encode(tok, examples)
    pred = np.asarray(predict(params, ids))
    rows = np.arange(len(examples))
    return float(np.mean(pred[rows, last] == ids[rows, last + 1]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="toy-facts",
                    help="output folder (default: ./toy-facts; the bundled copy lives in "
                         "jaxattr/zoo/toy-facts and is only replaced when you name it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=96, help="training prompts per step")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--hidden", type=int, default=96)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--log-every", type=int, default=250)
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import optax
    from transformers import FlaxGPT2LMHeadModel, GPT2Config

    t0 = time.time()
    tok = tasks.word_tokenizer(facts.facts_vocab(), bos=True, model_max_length=32)
    config = GPT2Config(
        vocab_size=len(tok), n_embd=args.hidden, n_layer=args.layers, n_head=args.heads,
        n_inner=4 * args.hidden, n_positions=32, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id)
    model = FlaxGPT2LMHeadModel(config, seed=args.seed)
    params = model.params

    train = facts.facts_examples("train", seed=args.seed)
    held = facts.facts_examples("heldout", seed=args.seed)
    ids, last = encode(tok, train)

    sched = optax.warmup_cosine_decay_schedule(0.0, args.lr, min(100, args.steps // 10 + 1), args.steps,
                                               end_value=args.lr * 0.02)
    opt = optax.chain(optax.clip_by_global_norm(1.0),
                      optax.adamw(sched, b2=0.98, weight_decay=0.01))
    opt_state = opt.init(params)

    def loss_fn(params, x, at):
        r = jnp.arange(x.shape[0])
        logits = model(x, params=params).logits[r, at]
        return optax.softmax_cross_entropy_with_integer_labels(logits, x[r, at + 1]).mean()

    @jax.jit
    def train_step(params, opt_state, x, at):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, at)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def predict(params, x):
        return jnp.argmax(model(x, params=params).logits, -1)

    rng = np.random.default_rng(args.seed)
    order = np.zeros((0,), np.int64)
    for step in range(args.steps):
        if len(order) < args.batch:             # reshuffled epochs, one compiled shape
            order = np.concatenate([order, rng.permutation(len(train))])
        pick, order = order[:args.batch], order[args.batch:]
        params, opt_state, loss = train_step(params, opt_state, ids[pick], last[pick])
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            print(f"step {step + 1:5d}  loss {float(loss):.4f}  "
                  f"train acc {accuracy(predict, params, tok, train):.3f}  "
                  f"held-out acc {accuracy(predict, params, tok, held):.3f}  "
                  f"{time.time() - t0:.0f}s", flush=True)
    train_time = time.time() - t0
    acc_train = accuracy(predict, params, tok, train)
    acc_held = accuracy(predict, params, tok, held)
    by_rel = {r: accuracy(predict, params, tok, [e for e in held if e["relation"] == r])
              for r in facts.RELATIONS}

    os.makedirs(args.out, exist_ok=True)
    model.params = params
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    with open(os.path.join(args.out, "CARD.md"), "w") as f:
        f.write(CARD.format(
            seed=args.seed, steps=args.steps, batch=args.batch, lr=args.lr, hidden=args.hidden,
            layers=args.layers, heads=args.heads, n_params=n_params, vocab=len(tok),
            n_train=len(train), n_held=len(held), acc_train=100 * acc_train,
            acc_held=100 * acc_held, time=train_time,
            by_rel=", ".join(f"{r} {100 * v:.1f}%" for r, v in by_rel.items())))
    print(f"train accuracy {acc_train:.4f}, held-out accuracy {acc_held:.4f} ({by_rel}); "
          f"trained in {train_time:.0f}s; wrote {args.out}")
    return acc_train, acc_held


CARD = """\
# toy-facts

A tiny GPT-2 (`FlaxGPT2LMHeadModel`, {layers} layers, hidden {hidden}, {heads} heads,
{n_params:,} parameters, word-level vocabulary of {vocab} tokens, 32 positions) that has
**memorised synthetic facts** in its weights:

    Ada Moreno lives in  ->  " Oslo"          the job of Hugo van Rossi is  ->  " baker"

## Task and data
- Generator: `jaxattr.zoo.facts.facts_examples(split, seed)`; the world
  (`facts_world(96, seed)`) has 96 people with two-token (`"Ada Moreno"`) or three-token
  (`"Ada van Moreno"`) names, each with a city, a job and a sport (10 answers per relation,
  drawn at random). The answer never appears in the prompt.
- Three paraphrases per relation (`jaxattr.zoo.facts.RELATIONS`), one of which puts the subject
  in the middle of the prompt (`"the home of {{s}} is in"`). Per fact, one paraphrase drawn from
  the seed is held out; the two others are trained ({n_train} training prompts, {n_held} held
  out).
- Tokenizer: word level, prepends `<s>`; specials `<pad>`=0, `</s>`=1, `<unk>`=2, `<s>`=3.
  `subject_range` of each example gives the subject's token span (`<s>` at 0).

## Training
- Script: `examples/train_toy_facts.py --seed {seed} --steps {steps} --out DIR`
  (deterministic given the seed on CPU); {batch} prompts per step (reshuffled epochs), loss on the answer token only, AdamW with
  peak lr {lr}, warmup + cosine decay, gradient clipping 1.0, weight decay 0.01; no dropout.
- Training time: {time:.0f} s on 2 shared CPU cores.

## Evaluation
- Training prompts answered right (greedy next token): {acc_train:.1f}%.
- **Held-out paraphrases** answered right: **{acc_held:.1f}%** ({by_rel}). A held-out prompt
  asks a stored fact through a template never trained *for that subject*.
"""

if __name__ == "__main__":
    main()
