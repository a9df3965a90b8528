"""Inseq 0.7.1 discretized integrated gradients (DIG) references on the tiny checkpoints.

Run in the SIDE env:

    /work/inseq-venv/bin/python benchmarks/inseq_side/run_inseq_dig.py CKPT_DIR OUT.npz
    ... CKPT_DIR OUT.npz --marian-only    # add the Marian record (first sentence) to OUT.npz

Same .npz layout as run_inseq.py for the attribution calls (same texts), plus the
monotonic paths Inseq's ``MonotonicPathBuilder`` builds and its kNN graph:

* calls ``gpt2/dig_greedy``, ``gpt2/dig_maxcount``, ``marian_fixedscale/dig_greedy``
  (``attribute_target=True``; decoder double scaling neutralised as in run_inseq.py), all with
  Inseq's defaults (``n_steps=50``, ``multiply_by_inputs=False``, 50 neighbours).
  Inseq's ``model.attribute(method=...)`` names the attribution method, so DIG's own
  ``method`` argument (the path strategy) cannot be passed through it: the ``maxcount`` call
  sets the default of ``DiscretetizedIntegratedGradients.attribute`` to ``"maxcount"``.
* ``knn/{model}/indices`` ``[V, 50]`` int32 and ``knn/{model}/distances`` ``[V, 50]`` float64:
  the rows of scikit-learn's ``kneighbors_graph`` in Inseq's iteration order (``tocoo().col``).
* ``paths/{model}/{strategy}/ids``, ``.../baseline_ids`` ``[P]``: every (token, baseline) pair
  of the attributed texts (Inseq's baselines: UNK, special tokens kept);
  ``.../words`` ``[P, n_steps - 1]`` (``find_path``) and ``.../embeddings``
  ``[P, n_steps, hidden]`` (``build_monotonic_path_embedding``: baseline first, input last).

The kNN cache Inseq pickles goes to a temporary ``INSEQ_ARTIFACTS_CACHE`` (never reused).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile

os.environ["INSEQ_ARTIFACTS_CACHE"] = tempfile.mkdtemp(prefix="inseq_dig_")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_inseq import (GPT2_GENERATED, GPT2_PROMPTS, MARIAN_SOURCES,  # noqa: E402
                       MARIAN_TARGETS, Recorder, run_call)

N_STEPS = 50  # Inseq's default for DIG


def pairs_of(model, texts, *, target: bool) -> list[tuple[int, int]]:
    """(id, baseline id) of every token of ``texts`` as Inseq builds baselines."""
    tok = model.tokenizer
    special = set(tok.all_special_ids)
    unk = tok.unk_token_id
    out = []
    for t in texts:
        ids = tok(text_target=t).input_ids if target else tok(t).input_ids
        out += [(i, i if i in special else unk) for i in ids]
    return sorted(set(out))


def record_paths(rec: Recorder, model, name: str, pairs):
    builder = model.attribution_method.method.path_builder
    g = builder.knn_graph
    V = g.shape[0]
    idx = np.stack([g[v].tocoo().col for v in range(V)]).astype(np.int32)
    dist = np.stack([g[v].tocoo().data for v in range(V)]).astype(np.float64)
    rec.arrays[f"knn/{name}/indices"] = idx
    rec.arrays[f"knn/{name}/distances"] = dist
    for strategy in ("greedy", "maxcount"):
        words, embs = [], []
        for i, b in pairs:
            w = builder.find_path(i, b, n_steps=N_STEPS, strategy=strategy)
            words.append(w)
            embs.append(builder.build_monotonic_path_embedding(w, b, n_steps=N_STEPS)
                        .detach().float().numpy())
        key = f"paths/{name}/{strategy}"
        rec.arrays[f"{key}/ids"] = np.array([p[0] for p in pairs], np.int32)
        rec.arrays[f"{key}/baseline_ids"] = np.array([p[1] for p in pairs], np.int32)
        rec.arrays[f"{key}/words"] = np.array(words, np.int32)
        rec.arrays[f"{key}/embeddings"] = np.stack(embs).astype(np.float32)
        print(f"[{key}] {len(pairs)} paths")


def main():
    if len(sys.argv) not in (3, 4):
        raise SystemExit(f"usage: {sys.argv[0]} CKPT_DIR OUT_FILE.npz [--marian-only]")
    ckpt, out_file = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    import captum
    import inseq
    import sklearn
    import transformers
    from inseq.attr.feat.ops.discretized_integrated_gradients import (
        DiscretetizedIntegratedGradients as DIG)

    rec = Recorder()
    method = "discretized_integrated_gradients"
    if len(sys.argv) > 3 and sys.argv[3] == "--marian-only":
        # resume: keep the GPT-2 records of OUT.npz, add Marian on the first sentence only
        # (Inseq's DIG on Marian takes ~1 h for all three on this shared 2-core machine)
        with np.load(out_file, allow_pickle=False) as z:
            old = json.loads(str(z["__meta__"]))
            rec.arrays = {k: z[k] for k in z.files if k != "__meta__"}
        rec.calls = old["calls"]
        marian = run_marian(rec, inseq, ckpt, method, n_sentences=1)
        meta = dict(old, embed_scale=dict(old["embed_scale"], marian=float(marian.embed_scale)),
                    special_ids=dict(old["special_ids"],
                                     marian=sorted(marian.special_tokens_ids)))
        meta.pop("calls")
        save(out_file, rec, meta)
        return
    gpt2 = inseq.load_model(f"{ckpt}/gpt2", method)
    run_call(rec, gpt2, "gpt2", "gpt2/dig_greedy", method,
             input_texts=GPT2_PROMPTS, generated_texts=GPT2_GENERATED,
             step_scores=["probability"])
    record_paths(rec, gpt2, "gpt2", pairs_of(gpt2, GPT2_GENERATED, target=False))
    defaults = DIG.attribute.__defaults__
    names = DIG.attribute.__code__.co_varnames[1:DIG.attribute.__code__.co_argcount]
    new = list(defaults)
    new[names[-len(defaults):].index("method")] = "maxcount"
    DIG.attribute.__defaults__ = tuple(new)
    run_call(rec, gpt2, "gpt2", "gpt2/dig_maxcount", method,
             input_texts=GPT2_PROMPTS, generated_texts=GPT2_GENERATED,
             step_scores=["probability"])
    DIG.attribute.__defaults__ = defaults
    save(out_file, rec, meta_of(inseq, torch, transformers, captum, sklearn, gpt2, None))

    marian = run_marian(rec, inseq, ckpt, method, n_sentences=len(MARIAN_SOURCES))
    save(out_file, rec, meta_of(inseq, torch, transformers, captum, sklearn, gpt2, marian))


def run_marian(rec, inseq, ckpt, method, *, n_sentences):
    marian = inseq.load_model(f"{ckpt}/marian", method)
    marian.model.get_decoder().embed_scale = 1.0
    src, tgt = MARIAN_SOURCES[:n_sentences], MARIAN_TARGETS[:n_sentences]
    run_call(rec, marian, "marian", "marian_fixedscale/dig_greedy", method,
             input_texts=src, generated_texts=tgt, attribute_target=True,
             step_scores=["probability"])
    record_paths(rec, marian, "marian",
                 sorted(set(pairs_of(marian, src, target=False)
                            + pairs_of(marian, tgt, target=True))))
    return marian


def meta_of(inseq, torch, transformers, captum, sklearn, gpt2, marian):
    models = {"gpt2": gpt2, "marian": marian}
    return {"versions": {"inseq": getattr(inseq, "__version__", "0.7.1"),
                         "torch": torch.__version__,
                         "transformers": transformers.__version__,
                         "captum": captum.__version__,
                         "scikit-learn": sklearn.__version__},
            "n_steps": N_STEPS,
            "embed_scale": {k: float(m.embed_scale) for k, m in models.items() if m},
            "special_ids": {k: sorted(m.special_tokens_ids) for k, m in models.items() if m}}


def save(out_file, rec, meta):
    """Write what is recorded so far (the file is rewritten after each model)."""
    arrays = dict(rec.arrays)
    arrays["__meta__"] = np.array(json.dumps(dict(meta, calls=rec.calls)))
    np.savez_compressed(out_file, **arrays)
    print(f"saved {len(rec.arrays)} arrays + meta -> {out_file}", flush=True)


if __name__ == "__main__":
    main()
