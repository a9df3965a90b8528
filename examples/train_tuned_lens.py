"""Train a tuned lens for a bundled model and compare it with the logit lens.

Trains the per-layer affine translators of a tuned lens (Belrose et al., 2023) on the
model's own task text, prints the held-out KL to the model's output and the next-token
cross-entropy per layer for both lenses, writes the lens next to the model
(``jaxattr/zoo/<name>/tuned_lens.safetensors``) and shows one prediction trajectory through
each lens. A couple of minutes on 2 CPU cores::

    python examples/train_tuned_lens.py                       # toy-recall
    python examples/train_tuned_lens.py --model toy-mt
    python examples/train_tuned_lens.py --out /tmp/lens.safetensors --steps 100
"""
from __future__ import annotations

import argparse
import os
import time

import jaxattr
from jaxattr.lens import evaluate_tuned_lens, logit_lens, save_lens, train_tuned_lens
from jaxattr.zoo import tasks

HELD_OUT_SEED = 999_983


def task_data(name: str, n: int, seed: int) -> list:
    """Training / held-out text of a bundled model's own task."""
    if name == "toy-recall":
        return [ex["prompt"] + ex["completion"] for ex in tasks.recall_examples(n, seed)]
    return [(ex["source"], ex["target"]) for ex in tasks.mt_examples(n, seed)]


def table(ev: dict) -> str:
    """Markdown table of the per-layer evaluation."""
    lines = ["| layer | KL logit lens | KL tuned lens | CE logit lens | CE tuned lens |",
             "|---|---|---|---|---|"]
    for l in range(len(ev["logit_kl"])):
        lines.append(f"| {'input' if l == 0 else l} | {ev['logit_kl'][l]:.3f} | "
                     f"{ev['tuned_kl'][l]:.3f} | {ev['logit_ce'][l]:.3f} | "
                     f"{ev['tuned_ce'][l]:.3f} |")
    lines.append(f"| output | 0 | 0 | {ev['final_ce']:.3f} | {ev['final_ce']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toy-recall", choices=sorted(jaxattr.zoo.BUNDLED))
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--tokens-per-step", type=int, default=2048)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--out", default=None, help="lens file (default: next to the model)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    model = jaxattr.load_model(args.model)
    train = task_data(args.model, 4000, args.seed)
    held_out = task_data(args.model, 400, HELD_OUT_SEED)
    t0 = time.perf_counter()
    lens, history = train_tuned_lens(model, train, steps=args.steps,
                                     tokens_per_step=args.tokens_per_step,
                                     seq_len=args.seq_len, batch_size=16, pack=False,
                                     seed=args.seed)
    print(f"trained {args.steps} steps in {time.perf_counter() - t0:.0f} s; training KL per "
          f"layer {history[0].round(3)} -> {history[-1].round(3)}")
    ev = evaluate_tuned_lens(model, lens, held_out, seq_len=args.seq_len, batch_size=32,
                             pack=False)
    print(f"\nheld-out ({ev['n_tokens']} tokens), nats per token:\n{table(ev)}\n")
    out = args.out or os.path.join(jaxattr.zoo.path(args.model), "tuned_lens.safetensors")
    save_lens(out, lens, metadata={"model": args.model, "steps": args.steps,
                                   "tokens_per_step": args.tokens_per_step,
                                   "seq_len": args.seq_len, "seed": args.seed})
    print(f"wrote {out}")

    example = held_out[0]
    texts = ([example], None) if isinstance(example, str) else ([example[0]], [example[1]])
    for lens_or_none in (None, lens):
        logit_lens(model, texts[0], texts[1], lens=lens_or_none, top_k=5).show()


if __name__ == "__main__":
    main()
