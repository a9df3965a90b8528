"""Train the bundled ``toy-recall`` model: a tiny GPT-2 that does in-context recall.

    "Kim's red ball. Sam's blue cup. Sam's" -> " blue cup."

The data comes from :func:`jaxattr.zoo.tasks.recall_examples`. Each training batch holds
recall sequences (the prompt's query followed by queries of the other facts, loss on each
answer's colour and object) and, as an auxiliary curriculum, as many sequences of random tokens
repeated twice (loss on the repeat). The repeats make the model grow induction heads within a
few hundred steps; without them a model this small sits at chance on recall for thousands of
steps. Held-out accuracy is greedy next token = the right colour. Runs in a few minutes on 2
CPU cores and is deterministic given ``--seed``::

    python examples/train_toy_recall.py                 # writes ./toy-recall-retrained/
    python examples/train_toy_recall.py --out /tmp/recall --steps 500
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from jaxattr.zoo import tasks

MAX_LEN = 32          # 3 facts + 3 queries: 1 + 12 + 12 tokens + EOS; repeats: 1 + 2 * 15
EVAL_SEED_OFFSET = 1_000_003


def build_config(tok, *, hidden, layers, heads):
    from transformers import GPT2Config
    return GPT2Config(
        vocab_size=len(tok), n_embd=hidden, n_layer=layers, n_head=heads, n_inner=4 * hidden,
        n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id)


def encode(tok, examples, *, all_queries=False, rng=None):
    """ids [N, MAX_LEN] (prompt + completion + EOS, right-padded), loss mask over the
    completion (colour, object, "."), and the index of the last prompt token (which predicts
    the colour).

    With ``all_queries`` (training), the example's query is followed by queries of the other
    facts in random order (``rng``), each with its completion: several supervised answers per
    sequence, while the first query is exactly the evaluation prompt.
    """
    n = len(examples)
    ids = np.full((n, MAX_LEN), tok.pad_token_id, np.int32)
    mask = np.zeros((n, MAX_LEN), np.float32)   # mask[t] = 1: predict ids[t + 1] at t
    last = np.zeros((n,), np.int32)
    for i, e in enumerate(examples):
        p = tok.convert_tokens_to_ids(e["tokens"])
        facts = [p[1 + 4 * f:5 + 4 * f] for f in range(e["n_facts"])]
        row = p[:-1]
        queries = [e["fact"]]
        if all_queries:
            others = [f for f in range(e["n_facts"]) if f != e["fact"]]
            rng.shuffle(others)
            queries += others
        for f in queries:
            mask[i, len(row):len(row) + 3] = 1.0       # name's -> colour -> object -> .
            row = row + facts[f]
        last[i] = len(p) - 1
        row = row + [tok.eos_token_id]
        ids[i, :len(row)] = row
    return ids, mask, last


def repeats(tok, n, rng, length=15):
    """``n`` sequences ``<s> x x`` of ``length`` random word tokens ``x``; loss on the repeat."""
    lo = len(tasks.SPECIAL_TOKENS)
    x = rng.integers(lo, len(tok), (n, length))
    ids = np.full((n, MAX_LEN), tok.pad_token_id, np.int32)
    ids[:, 0] = tok.bos_token_id
    ids[:, 1:1 + length] = x
    ids[:, 1 + length:1 + 2 * length] = x
    mask = np.zeros((n, MAX_LEN), np.float32)
    mask[:, 1 + length:2 * length] = 1.0
    return ids, mask


_PREDICT = {}


def accuracy(model, params, tok, examples, batch=250, *, completion=False):
    """Greedy next-token accuracy on the answer colour; with ``completion``, also the
    accuracy of the whole greedy completion (colour, object, ".")."""
    import jax
    import jax.numpy as jnp

    if id(model) not in _PREDICT:
        @jax.jit
        def predict(params, ids):
            return jnp.argmax(model(ids, params=params).logits, -1)
        _PREDICT[id(model)] = predict
    predict = _PREDICT[id(model)]
    right = full = 0
    for s in range(0, len(examples), batch):
        chunk = examples[s:s + batch]
        padded = chunk + [chunk[0]] * (batch - len(chunk))    # one compiled shape
        ids, _, last = encode(tok, padded)
        pred = np.asarray(predict(params, ids))
        for i in range(len(chunk)):
            t = last[i]
            ok = pred[i, t:t + 3] == ids[i, t + 1:t + 4]   # teacher forced = greedy while right
            right += int(ok[0])
            full += int(ok.all())
    n = len(examples)
    return (right / n, full / n) if completion else right / n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--batch", type=int, default=32,
                    help="recall sequences per step (plus as many repeat sequences)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--n-eval", type=int, default=2000)
    ap.add_argument("--log-every", type=int, default=250)
    ap.add_argument("--out", default="toy-recall-retrained",
                    help="output directory, new or empty (default: ./toy-recall-retrained); the "
                         "bundled model in jaxattr/zoo/ is replaced only with --overwrite")
    ap.add_argument("--overwrite", action="store_true",
                    help="write into an existing, non-empty directory (e.g. jaxattr/zoo/toy-recall)")
    args = ap.parse_args(argv)
    if os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
        ap.error(f"--out {args.out} exists and is not empty; choose a new directory or pass "
                 "--overwrite (the bundled model is jaxattr/zoo/toy-recall).")

    import jax
    import optax
    from transformers import FlaxGPT2LMHeadModel

    t0 = time.time()
    tok = tasks.word_tokenizer(tasks.recall_vocab(), bos=True, model_max_length=64)
    config = build_config(tok, hidden=args.hidden, layers=args.layers, heads=args.heads)
    model = FlaxGPT2LMHeadModel(config, seed=args.seed)
    params = model.params

    sched = optax.warmup_cosine_decay_schedule(0.0, args.lr, min(200, args.steps // 10 + 1),
                                               args.steps, end_value=args.lr * 0.05)
    opt = optax.chain(optax.clip_by_global_norm(1.0),
                      optax.adamw(sched, b2=0.98, weight_decay=0.01))
    opt_state = opt.init(params)

    def loss_fn(params, ids, mask):
        logits = model(ids, params=params).logits[:, :-1]
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:])
        m = mask[:, :-1]
        return (nll * m).sum() / m.sum()

    @jax.jit
    def train_step(params, opt_state, ids, mask):
        loss, grads = jax.value_and_grad(loss_fn)(params, ids, mask)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    # One fresh batch per step, drawn from streams seeded by --seed.
    stream = tasks.recall_examples(args.steps * args.batch, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    monitor = tasks.recall_examples(250, seed=args.seed + EVAL_SEED_OFFSET + 1)
    losses = []
    for step in range(args.steps):
        ids, mask, _ = encode(tok, stream[step * args.batch:(step + 1) * args.batch],
                              all_queries=True, rng=rng)
        r_ids, r_mask = repeats(tok, args.batch, rng)
        params, opt_state, loss = train_step(params, opt_state, np.concatenate([ids, r_ids]),
                                             np.concatenate([mask, r_mask]))
        losses.append(loss)
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            acc = accuracy(model, params, tok, monitor)
            print(f"step {step + 1:5d}  loss {float(np.mean(jax.device_get(losses))):.4f}  "
                  f"monitor acc {acc:.3f}  {time.time() - t0:.0f}s", flush=True)
            losses = []
    train_time = time.time() - t0

    eval_seed = args.seed + EVAL_SEED_OFFSET
    held_out = tasks.recall_examples(args.n_eval, seed=eval_seed)
    acc, acc_completion = accuracy(model, params, tok, held_out, completion=True)
    by_k = {k: accuracy(model, params, tok, [e for e in held_out if e["n_facts"] == k])
            for k in sorted({e["n_facts"] for e in held_out})}
    print(f"held-out accuracy {acc:.4f} (by number of facts: {by_k}), whole completion "
          f"{acc_completion:.4f}; "
          f"trained in {train_time:.0f}s")

    os.makedirs(args.out, exist_ok=True)
    model.params = params
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    card = CARD.format(
        seed=args.seed, steps=args.steps, batch=args.batch, lr=args.lr, hidden=args.hidden,
        layers=args.layers, heads=args.heads, n_params=n_params, vocab=len(tok),
        n_eval=args.n_eval, eval_seed=eval_seed, acc=100 * acc,
        acc_completion=100 * acc_completion,
        by_k=", ".join(f"{k} facts {100 * v:.1f}%" for k, v in by_k.items()),
        time=train_time, n_train=args.steps * args.batch)
    with open(os.path.join(args.out, "CARD.md"), "w") as f:
        f.write(card)
    print(f"wrote {args.out}")
    return acc


CARD = """\
# toy-recall

A tiny GPT-2 (`FlaxGPT2LMHeadModel`, {layers} layers, hidden {hidden}, {heads} heads,
{n_params:,} parameters, word-level vocabulary of {vocab} tokens, 64 positions) trained from
scratch on synthetic **in-context recall**:

    Kim's red ball. Sam's blue cup. Sam's  ->  " blue cup."

## Task and data
- Generator: `jaxattr.zoo.tasks.recall_examples(n, seed)`. Each prompt lists 2 or 3 facts
  `"<name>'s <colour> <object>."` (12 names, 8 colours, 8 objects; names and colours distinct
  within a prompt, objects may repeat) and queries one name with `"<name>'s"`.
- The answer is the colour bound to the queried name; the model continues with
  `" <colour> <object>."`.
- Tokenizer: word level (`tokenizers` `WordLevel`; possessives such as `Sam's` are one token,
  punctuation is split off), prepends `<s>`; specials `<pad>`=0, `</s>`=1, `<unk>`=2, `<s>`=3.

## Ground-truth cue
The colour token inside the queried fact (the only occurrence of the answer colour in the
prompt). Each example's `cue_index` is its position in the prompt tokens as jaxattr shows them
(`seq.target`, `<s>` at 0); `name_index` is the queried name inside its fact,
`query_index` the query itself, and `distractor_indices` the other facts' colours.

## Training
- Script: `examples/train_toy_recall.py --seed {seed} --steps {steps}` (deterministic given the
  seed, CPU).
- Seed {seed}; {steps} steps; each step holds {batch} recall sequences (freshly generated, in
  all {n_train:,} from `recall_examples(steps * batch, seed={seed})`; the prompt's query is
  followed by queries of the other facts, loss on every completion) and {batch}
  auxiliary sequences of 15 random word tokens repeated twice (loss on the repeat), which makes
  induction heads form early. AdamW, peak lr {lr}, warmup + cosine decay, gradient clipping
  1.0; no dropout.
- Training time: {time:.0f} s on 2 shared CPU cores.

## Evaluation
- Held-out accuracy (greedy next token after the prompt = the right colour) on {n_eval}
  prompts from `recall_examples({n_eval}, seed={eval_seed})`: **{acc:.1f}%** ({by_k}).
- Whole greedy completion right (`" <colour> <object>."`): {acc_completion:.1f}%.
- The model was not trained to stop after the completion (training sequences go on with
  further queries): generate with `max_new_tokens=1` for the answer, 3 for the completion.
"""

if __name__ == "__main__":
    main()
