"""Train the bundled ``toy-context`` model: a tiny GPT-2 whose pronoun comes from the context.

    "Kim is a woman from Rome. Kim said that" -> " she is happy."

Data: :func:`jaxattr.zoo.context_task.context_examples`. Each step mixes sequences with the
context sentence (loss on the output) and sequences without it, whose pronoun is a coin flip,
so the model learns that only the context decides the pronoun. Held-out accuracy is the greedy
pronoun after the full prompt. About a minute on 2 CPU cores, deterministic given ``--seed``::

    python examples/train_toy_context.py              # writes jaxattr/zoo/toy-context/
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from jaxattr.zoo import context_task, tasks

ZOO = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "jaxattr", "zoo")
MAX_LEN = 20
EVAL_SEED = 1_000_003


def encode(tok, examples, rng, *, p_contextless=0.3):
    """ids ``[N, MAX_LEN]`` (``<s>`` context? current output ``</s>``) and the loss mask over
    the output tokens and EOS. Contextless rows get a random pronoun."""
    n = len(examples)
    ids = np.full((n, MAX_LEN), tok.pad_token_id, np.int32)
    mask = np.zeros((n, MAX_LEN), np.float32)
    for i, e in enumerate(examples):
        out = e["output_current_text"]
        prompt = f"{e['input_context_text']} {e['input_current_text']}"
        if rng.random() < p_contextless:
            prompt = e["input_current_text"]
            out = f"{('he', 'she')[rng.integers(2)]} {out.split(' ', 1)[1]}"
        p = tok(prompt)["input_ids"]
        o = tok(out, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        row = p + o
        ids[i, :len(row)] = row
        mask[i, len(p) - 1:len(row) - 1] = 1.0       # predict every output token
    return ids, mask


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--hidden", type=int, default=48)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--n-eval", type=int, default=1000)
    ap.add_argument("--out", default=os.path.normpath(os.path.join(ZOO, "toy-context")))
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import optax
    from transformers import FlaxGPT2LMHeadModel, GPT2Config

    t0 = time.time()
    tok = tasks.word_tokenizer(context_task.context_vocab(), bos=True, model_max_length=64)
    config = GPT2Config(vocab_size=len(tok), n_embd=args.hidden, n_layer=args.layers,
                        n_head=args.heads, n_inner=4 * args.hidden, n_positions=64,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id)
    model = FlaxGPT2LMHeadModel(config, seed=args.seed)
    params = model.params
    sched = optax.warmup_cosine_decay_schedule(0.0, args.lr, args.steps // 10 + 1, args.steps,
                                               end_value=args.lr * 0.05)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=0.01))
    opt_state = opt.init(params)

    def loss_fn(params, ids, mask):
        logits = model(ids, params=params).logits[:, :-1]
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:])
        return (nll * mask[:, :-1]).sum() / mask[:, :-1].sum()

    @jax.jit
    def step_fn(params, opt_state, ids, mask):
        loss, grads = jax.value_and_grad(loss_fn)(params, ids, mask)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(args.seed)
    stream = context_task.context_examples(args.steps * args.batch, seed=args.seed)
    for step in range(args.steps):
        ids, mask = encode(tok, stream[step * args.batch:(step + 1) * args.batch], rng)
        params, opt_state, loss = step_fn(params, opt_state, ids, mask)
        if (step + 1) % 100 == 0:
            print(f"step {step + 1:4d}  loss {float(loss):.4f}  {time.time() - t0:.0f}s",
                  flush=True)
    train_time = time.time() - t0

    held_out = context_task.context_examples(args.n_eval, seed=EVAL_SEED)
    prompts = [tok(f"{e['input_context_text']} {e['input_current_text']}")["input_ids"]
               for e in held_out]
    ids = jnp.asarray(np.array(prompts, np.int32))          # every prompt has the same length
    pred = np.asarray(jnp.argmax(model(ids, params=params).logits[:, -1], -1))
    right = tok.convert_tokens_to_ids(context_task.pronoun_tokens(held_out))
    acc = float(np.mean(pred == np.array(right)))
    print(f"held-out pronoun accuracy {acc:.4f}; trained in {train_time:.0f}s")

    os.makedirs(args.out, exist_ok=True)
    model.params = params
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    with open(os.path.join(args.out, "CARD.md"), "w") as f:
        f.write(CARD.format(seed=args.seed, steps=args.steps, batch=args.batch, lr=args.lr,
                            hidden=args.hidden, layers=args.layers, heads=args.heads,
                            n_params=n_params, vocab=len(tok), n_eval=args.n_eval,
                            eval_seed=EVAL_SEED, acc=100 * acc, time=train_time))
    print(f"wrote {args.out}")
    return acc


CARD = """\
# toy-context

A tiny GPT-2 (`FlaxGPT2LMHeadModel`, {layers} layers, hidden {hidden}, {heads} heads,
{n_params:,} parameters, word-level vocabulary of {vocab} tokens, 64 positions) trained from
scratch so that its output depends on a context sentence in a known way:

    context "Kim is a woman from Rome."  current "Kim said that"  ->  " she is happy."

## Task and data
- Generator: `jaxattr.zoo.context_task.context_examples(n, seed)`: 12 gender-neutral names,
  `man` / `woman`, 8 cities, 6 adjectives; the pronoun is `he` for `man`, `she` for `woman`; the
  adjective is random.
- 30% of the training sequences drop the context and draw the pronoun at random, so without
  the context the pronoun is a coin flip.
- Tokenizer: word level, prepends `<s>`; specials `<pad>`=0, `</s>`=1, `<unk>`=2, `<s>`=3.

## Ground truth for PECoRe
- CTI: the pronoun (output token 0) is the context-sensitive token.
- CCI: its cue is the gender word, input-context token 3.

## Training
- Script: `examples/train_toy_context.py --seed {seed} --steps {steps}` (CPU, deterministic).
- {steps} steps of {batch} fresh sequences, AdamW peak lr {lr}, warmup + cosine decay, clipping
  1.0, no dropout; loss on the output tokens and EOS. {time:.0f} s on 2 shared CPU cores.

## Evaluation
- Held-out greedy pronoun after the full prompt, {n_eval} examples from
  `context_examples({n_eval}, seed={eval_seed})`: **{acc:.1f}%**.
"""

if __name__ == "__main__":
    main()
