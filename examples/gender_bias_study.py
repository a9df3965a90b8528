"""Gender bias in machine translation on the bundled ``toy-mt``: attribution and causal mediation.

    python examples/gender_bias_study.py [--out DIR]

``toy-mt``'s training corpus skews each occupation toward a gender by a known amount
(``jaxattr.zoo.tasks``: cued sentences take the stereotypical gender with probability 0.8, and
the cue-less ``bare`` template, 20% of the data, always does), so the feminine share of each
occupation's training translations is ``0.2 + 0.8 · 0.8 = 0.84`` for the feminine-stereotyped
occupations and ``0.16`` for the others.

1. **Attribution** (the table of the Inseq paper's study): for the cue-less template
   ``"the <occupation> is <adjective>"``, per occupation (mean over the adjectives) the model's
   p(feminine article ``la``) and the attribution of the occupation and of the source article
   ``the`` to the output article, under saliency, integrated gradients and input × gradient
   (L2 over the hidden axis, columns normalised as in Inseq); Kendall τ-b of each against the
   training skew (two skew levels, so τ-b handles the ties).
2. **Causal mediation** (Vig et al., 2020): the intervention swaps the pronoun of
   ``"the <occupation> said <stereotypical pronoun> is <adjective>"`` to the anti-stereotypical
   one (``he`` ↔ ``she``: both single tokens of toy-mt's vocabulary, and no ``man`` / ``woman``
   exists in it); the response is ``y = p(anti-stereotypical article) / p(stereotypical
   article)`` at the first output step. Total effect, and the natural indirect / direct effects
   of every attention head and every MLP-output unit of both stacks (one vmapped program each).
"""
import argparse
import os
import time

import numpy as np
from scipy.stats import kendalltau

import jaxattr
from jaxattr.interventions import causal_mediation
from jaxattr.zoo import tasks

ap = argparse.ArgumentParser()
ap.add_argument("--out", default=None, help="directory for the figures and results")
ap.add_argument("--adjectives", type=int, default=len(tasks.ADJECTIVES),
                help="adjectives per occupation (attribution: the first N; mediation: the "
                     "first min(N, 2)); default all")
args = ap.parse_args()
if args.adjectives < 1:
    ap.error(f"--adjectives must be at least 1 (got {args.adjectives})")

model = jaxattr.load_model("toy-mt")
occs = list(tasks.OCCUPATIONS)
adjs = list(tasks.ADJECTIVES)[:args.adjectives]
ART = {"m": "lo", "f": "la"}
PRON = {"m": "he", "f": "she"}
SUFFIX = {"m": "o", "f": "a"}
skew = np.array([0.2 + 0.8 * 0.8 if tasks.OCCUPATIONS[o][1] == "f" else 0.8 * 0.2
                 for o in occs])                          # training share of feminine forms

# ---------------------------------------------------------------------------- 1. attribution
t0 = time.time()
sources = [f"the {o} is {a}" for o in occs for a in adjs]
# force the feminine translation; the article (step 1) is what we attribute
fem = [f"la {tasks.OCCUPATIONS[o][0]}a es {tasks.ADJECTIVES[a]}a" for o in occs for a in adjs]
rows = {}
p_fem = None
for method in ("saliency", "integrated_gradients", "input_x_gradient"):
    out = model.attribute(sources, fem, method=method, attr_pos_start=1, attr_pos_end=2,
                          step_scores=("probability",), show_progress=False)
    agg = out.aggregate("vnorm")   # L2 over hidden for every method, as the Inseq study
    col = np.stack([s.source_attributions[:, 0] for s in agg.sequence_attributions])  # [N, S]
    rows[method] = (col[:, 1].reshape(len(occs), -1).mean(1),     # the occupation
                    col[:, 0].reshape(len(occs), -1).mean(1))     # the source article "the"
    if p_fem is None:
        p = np.array([float(s.step_scores["probability"][0]) for s in out.sequence_attributions])
        p_fem = p.reshape(len(occs), -1).mean(1)
print(f"attribution: {time.time() - t0:.0f} s")

lines = ["| occupation | training p(fem) | model p(fem) | "
         + " | ".join(f"{m} occ. / art." for m in rows) + " |",
         "|---|---|---|" + "---|" * len(rows)]
for k, o in enumerate(occs):
    lines.append(f"| {o} | {skew[k]:.2f} | {p_fem[k]:.4f} | " + " | ".join(
        f"{rows[m][0][k]:.3f} / {rows[m][1][k]:.3f}" for m in rows) + " |")
tau = lambda x: kendalltau(skew, x).statistic             # noqa: E731
lines.append(f"| **Kendall τ-b vs training skew** | 1 | {tau(p_fem):+.3f} | " + " | ".join(
    f"{tau(rows[m][0]):+.3f} / {tau(rows[m][1]):+.3f}" for m in rows) + " |")
table = "\n".join(lines)
print(table)

# ---------------------------------------------------------------------------- 2. mediation
t0 = time.time()
base, intervened, stereo, anti = [], [], [], []
for o in occs:
    g = tasks.OCCUPATIONS[o][1]
    h = {"m": "f", "f": "m"}[g]
    for a in adjs[:2]:
        base.append(f"the {o} said {PRON[g]} is {a}")
        intervened.append(f"the {o} said {PRON[h]} is {a}")
        stereo.append(ART[g])
        anti.append(ART[h])
results = {}
for mediator in ("heads", "mlp"):
    results[mediator] = causal_mediation(model, base, intervened, "", stereotypical=stereo,
                                         anti_stereotypical=anti, mediator=mediator)
print(f"mediation: {time.time() - t0:.0f} s")
te = results["heads"].total_effect
print(f"total effect over {len(te)} sentences: median {np.median(te):.3g} "
      f"(y base median {np.median(results['heads'].response[:, 0]):.3g}, "
      f"intervened {np.median(results['heads'].response[:, 1]):.3g})")
for mediator, r in results.items():
    # TE is huge for a confident model: read effects as shares of the shift of log y
    mean_share = r.log_share("indirect").mean(0)
    direct = r.log_share("direct").mean(0)
    order = np.argsort(-mean_share, axis=None)[:5]
    print(f"\n{mediator}: sparsity (share of units holding half the summed positive NIE) "
          f"{r.sparsity():.3f}; top units by the share of the log y shift they mediate:")
    for i in order:
        l, u = divmod(int(i), mean_share.shape[1])
        print(f"  {r.layers[l]:>28s} unit {u:3d}: log-share NIE {mean_share[l, u]:+.3f}, "
              f"NDE {direct[l, u]:+.3f}")
    per_layer = mean_share.sum(1)
    print("  summed log-share NIE per block: " + ", ".join(
        f"{s.split('.head_out')[0].split('.mlp_out')[0]} {v:+.3f}"
        for s, v in zip(r.layers, per_layer)))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        r.save(os.path.join(args.out, f"mediation_{mediator}.npz"))
        fig = r.figure()
        fig.savefig(os.path.join(args.out, f"mediation_{mediator}.png"), dpi=120,
                    bbox_inches="tight")
if args.out:
    with open(os.path.join(args.out, "attribution_table.md"), "w") as fh:
        fh.write(table + "\n")
