"""Train the bundled ``toy-mt`` model: a tiny Marian that translates into a gendered language.

    "the nurse said he is tired" -> "lo enfermero dis ke il es kansado"

The data comes from :func:`jaxattr.zoo.tasks.mt_examples`: the target's article, noun,
pronoun and adjective agree with the gender set by a pronoun, possessive or gendered noun in the
source, and the corpus has an occupational gender skew (``skew`` = 0.8 stereotypical), which
makes it a miniature of the gender-bias case study of the Inseq paper. Held-out accuracy is
greedy exact match. Runs in a few minutes on 2 CPU cores, deterministic given ``--seed``::

    python examples/train_toy_mt.py                     # writes ./toy-mt-retrained/
    python examples/train_toy_mt.py --out /tmp/mt --steps 500
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from jaxattr.zoo import tasks

SRC_LEN = 7           # longest source: 6 words + </s>
TGT_LEN = 8           # longest target: 7 words + </s>
EVAL_SEED_OFFSET = 1_000_003


def build_config(tok, *, hidden, layers, heads):
    from transformers import MarianConfig
    return MarianConfig(
        vocab_size=len(tok), decoder_vocab_size=len(tok), d_model=hidden,
        encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=heads,
        decoder_attention_heads=heads, encoder_ffn_dim=4 * hidden, decoder_ffn_dim=4 * hidden,
        max_position_embeddings=32, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        scale_embedding=True, share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id, decoder_start_token_id=tok.pad_token_id,
        forced_eos_token_id=tok.eos_token_id, max_length=TGT_LEN + 1, num_beams=1)


def encode(tok, examples):
    """Source ids/mask [N, SRC_LEN]; labels [N, TGT_LEN] (target + </s>, padded) with their
    mask; decoder inputs = labels shifted right behind the decoder start token (pad)."""
    n = len(examples)
    pad = tok.pad_token_id
    src = np.full((n, SRC_LEN), pad, np.int32)
    src_mask = np.zeros((n, SRC_LEN), np.int32)
    labels = np.full((n, TGT_LEN), pad, np.int32)
    lab_mask = np.zeros((n, TGT_LEN), np.float32)
    for i, e in enumerate(examples):
        s = tok.convert_tokens_to_ids(e["source_tokens"])
        t = tok.convert_tokens_to_ids(e["target"].split()) + [tok.eos_token_id]
        src[i, :len(s)], src_mask[i, :len(s)] = s, 1
        labels[i, :len(t)], lab_mask[i, :len(t)] = t, 1.0
    dec_in = np.concatenate([np.full((n, 1), pad, np.int32), labels[:, :-1]], 1)
    return src, src_mask, labels, lab_mask, dec_in


def make_greedy(model, tok):
    """A jitted greedy decoder (fixed TGT_LEN steps; recomputes the tiny decoder each step)."""
    import jax
    import jax.numpy as jnp
    pad = tok.pad_token_id

    @jax.jit
    def greedy(params, src, src_mask):
        n = src.shape[0]
        enc = model.encode(src, attention_mask=src_mask, params=params)
        dec = jnp.full((n, TGT_LEN + 1), pad, jnp.int32)

        def body(t, dec):
            out = model.decode(dec[:, :-1], enc, encoder_attention_mask=src_mask,
                               params=params)
            nxt = jnp.argmax(out.logits[:, t], -1).astype(jnp.int32)
            return dec.at[:, t + 1].set(nxt)

        return jax.lax.fori_loop(0, TGT_LEN, body, dec)[:, 1:]

    return greedy


def translate(greedy, params, tok, examples, batch=500):
    outs = []
    for s in range(0, len(examples), batch):
        src, src_mask, *_ = encode(tok, examples[s:s + batch])
        for row in np.asarray(greedy(params, src, src_mask)).tolist():
            if tok.eos_token_id in row:
                row = row[:row.index(tok.eos_token_id)]
            outs.append(" ".join(tok.convert_ids_to_tokens(row)))
    return outs


def exact_match(greedy, params, tok, examples):
    if not examples:
        return float("nan")
    hyps = translate(greedy, params, tok, examples)
    return float(np.mean([h == e["target"] for h, e in zip(hyps, examples)]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--skew", type=float, default=0.8)
    ap.add_argument("--n-eval", type=int, default=2000)
    ap.add_argument("--out", default="toy-mt-retrained",
                    help="output directory, new or empty (default: ./toy-mt-retrained); the "
                         "bundled model in jaxattr/zoo/ is replaced only with --overwrite")
    ap.add_argument("--overwrite", action="store_true",
                    help="write into an existing, non-empty directory (e.g. jaxattr/zoo/toy-mt)")
    args = ap.parse_args(argv)
    if os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
        ap.error(f"--out {args.out} exists and is not empty; choose a new directory or pass "
                 "--overwrite (the bundled model is jaxattr/zoo/toy-mt).")

    import jax
    import optax
    from transformers import FlaxMarianMTModel

    t0 = time.time()
    tok = tasks.word_tokenizer(tasks.mt_vocab(), eos=True, model_max_length=32)
    config = build_config(tok, hidden=args.hidden, layers=args.layers, heads=args.heads)
    model = FlaxMarianMTModel(config, seed=args.seed)
    params = model.params

    sched = optax.warmup_cosine_decay_schedule(0.0, args.lr, min(200, args.steps // 10 + 1),
                                               args.steps, end_value=args.lr * 0.05)
    opt = optax.chain(optax.clip_by_global_norm(1.0),
                      optax.adamw(sched, b2=0.98, weight_decay=0.01))
    opt_state = opt.init(params)

    def loss_fn(params, src, src_mask, labels, lab_mask, dec_in):
        logits = model(src, attention_mask=src_mask, decoder_input_ids=dec_in,
                       params=params).logits
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return (nll * lab_mask).sum() / lab_mask.sum()

    @jax.jit
    def train_step(params, opt_state, *batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    stream = tasks.mt_examples(args.steps * args.batch, seed=args.seed, skew=args.skew)
    losses = []
    for step in range(args.steps):
        batch = encode(tok, stream[step * args.batch:(step + 1) * args.batch])
        params, opt_state, loss = train_step(params, opt_state, *batch)
        losses.append(loss)
        if (step + 1) % 250 == 0 or step + 1 == args.steps:
            print(f"step {step + 1:5d}  loss {float(np.mean(jax.device_get(losses))):.4f}  "
                  f"{time.time() - t0:.0f}s", flush=True)
            losses = []
    train_time = time.time() - t0

    greedy = make_greedy(model, tok)
    eval_seed = args.seed + EVAL_SEED_OFFSET
    held_out = tasks.mt_examples(args.n_eval, seed=eval_seed, skew=args.skew)
    acc = exact_match(greedy, params, tok, held_out)
    by_template = {t: exact_match(greedy, params, tok,
                                  [e for e in held_out if e["template"] == t])
                   for t in tasks.MT_TEMPLATES}
    anti = [e for e in held_out if e["anti_stereotypical"]]
    acc_anti = exact_match(greedy, params, tok, anti)
    # a balanced anti-stereotypical test set: every cued example against the stereotype
    anti_set = [e for e in tasks.mt_examples(args.n_eval, seed=eval_seed + 1,
                                             templates={"pronoun": 1, "possessive": 1,
                                                        "relative": 1}, skew=0.0)]
    acc_anti_set = exact_match(greedy, params, tok, anti_set)
    print(f"held-out exact match {acc:.4f}; by template {by_template}; anti-stereotypical "
          f"{acc_anti:.4f} ({len(anti)}), all-anti set {acc_anti_set:.4f}; "
          f"trained in {train_time:.0f}s")

    os.makedirs(args.out, exist_ok=True)
    model.params = params
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    card = CARD.format(
        seed=args.seed, steps=args.steps, batch=args.batch, lr=args.lr, hidden=args.hidden,
        layers=args.layers, heads=args.heads, n_params=n_params, vocab=len(tok),
        skew=args.skew, n_eval=args.n_eval, eval_seed=eval_seed, acc=100 * acc,
        by_template=", ".join(f"{k} {100 * v:.1f}%" for k, v in by_template.items()),
        acc_anti=100 * acc_anti, n_anti=len(anti), acc_anti_set=100 * acc_anti_set,
        anti_seed=eval_seed + 1, time=train_time, n_train=args.steps * args.batch)
    with open(os.path.join(args.out, "CARD.md"), "w") as f:
        f.write(card)
    print(f"wrote {args.out}")
    return acc


CARD = """\
# toy-mt

A tiny Marian encoder-decoder (`FlaxMarianMTModel`, {layers}+{layers} layers,
d_model {hidden}, {heads} heads, {n_params:,} parameters, one shared word-level vocabulary of
{vocab} tokens) trained from scratch to translate simple English sentences into a small synthetic
language with grammatical gender -- a miniature of the gender-bias case study of the Inseq
paper (does the model look at the pronoun or at the occupation?).

    the nurse said he is tired   ->  lo enfermero dis ke il es kansado
    the doctor lost her keys     ->  la doktora perdi su klaves
    the pilot is my mother       ->  la pilota es mi madre
    the teacher is tired         ->  la maestra es kansada

## Task and data
- Generator: `jaxattr.zoo.tasks.mt_examples(n, seed, skew={skew})`. Templates (weights
  `tasks.MT_TEMPLATES`): `pronoun` 35%, `possessive` 25%, `relative` (gendered noun) 20%,
  `bare` 20%. The article (`lo`/`la`), the occupation noun (`-o`/`-a`), the target pronoun
  (`il`/`ela`) and adjectives (`-o`/`-a`) agree with the gender of the occupation's referent.
- Occupational skew: 10 occupations, each with a stereotypical gender (doctor, engineer,
  pilot, lawyer, mechanic: masculine; nurse, teacher, dancer, secretary, cleaner: feminine).
  In the cued templates the gender is the stereotypical one with probability {skew}; the
  target must follow the cue. `bare` sentences carry no cue and are translated with the
  stereotypical gender (the deliberate bias of the corpus).
- Tokenizer: word level (`tokenizers` `WordLevel`, split on spaces), appends `</s>` to source
  and target (`tokenizer(text_target=...)`); specials `<pad>`=0 (also the decoder start
  token), `</s>`=1, `<unk>`=2, `<s>`=3.

## Ground-truth cue
The source token that sets the gender: the pronoun (`he`/`she`), the possessive
(`his`/`her`) or the gendered noun (`mother`, `uncle`, ...); for `bare` sentences, the
occupation. Each example's `cue_index` is its position in `seq.source` (source words, then
`</s>`); `gender_steps` are the positions in `seq.target` (decoder start token at 0) of the
gender-marked target tokens; `contrast_target` is the same translation with the other gender.

## Training
- Script: `examples/train_toy_mt.py --seed {seed} --steps {steps}` (deterministic given the
  seed, CPU).
- Seed {seed}; {steps} steps of batch {batch} ({n_train:,} freshly generated pairs from
  `mt_examples(steps * batch, seed={seed}, skew={skew})`); AdamW, peak lr {lr}, warmup +
  cosine decay, gradient clipping 1.0; cross-entropy on all target tokens; no dropout.
- Training time: {time:.0f} s on 2 shared CPU cores.

## Evaluation (greedy, exact match)
- Held-out: {n_eval} pairs from `mt_examples({n_eval}, seed={eval_seed}, skew={skew})`:
  **{acc:.1f}%** (by template: {by_template}).
- Anti-stereotypical examples in that set ({n_anti}): {acc_anti:.1f}%.
- All-anti-stereotypical set (`mt_examples({n_eval}, seed={anti_seed}, skew=0.0,
  templates={{"pronoun": 1, "possessive": 1, "relative": 1}})`): {acc_anti_set:.1f}%.
"""

if __name__ == "__main__":
    main()
