"""Diagnostic classifiers on the bundled ``toy-mt``: where is the gender of the translation?

    python examples/probing_gender.py [--n 2000] [--out DIR]

``toy-mt`` translates English into a toy language whose article, noun and adjectives agree in
gender with the occupation's referent ("the nurse said he is tired" -> "lo enfermero ...").
We probe, layer by layer, for the gender the output will take:

* encoder states at the occupation token (source position 1): its embedding only knows the
  occupation, so the best it can do is the occupation's stereotype -- ground truth: exactly
  the share of test examples whose gender is their occupation's majority gender; later
  encoder layers can read the cue (pronoun, possessive, gendered noun) and do better;
* decoder states at the start position (the one that predicts the article): the embedding is
  the same for every example (chance), the last layer must hold the gender, since the model
  writes the right article every time (its card: 100% held out).

A control task (Hewitt & Liang) gives every occupation a random gender: a probe that
decodes it merely recognises the occupation. Selectivity = accuracy - control accuracy.
"""
import argparse
import os

import numpy as np

import jaxattr
import jaxattr.probing as P
from jaxattr.zoo import tasks

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=2000)
ap.add_argument("--out", default=".", help="where to write probe.json and probe.png")
args = ap.parse_args()

model = jaxattr.load_model("toy-mt")
ex = tasks.mt_examples(args.n, seed=11)
src, tgt = [e["source"] for e in ex], [e["target"] for e in ex]
gender = np.array([e["gender"] for e in ex])
occupation = np.array([e["occupation"] for e in ex])

enc = P.collect_features(model, src, tgt, sites=("encoder.embed", "encoder.blocks.*.resid_post"),
                         positions=1, batch_size=256)          # the occupation token
dec = P.collect_features(model, src, tgt, sites=("decoder.embed", "decoder.blocks.*.resid_post"),
                         positions=0, batch_size=256)          # predicts the article
assert [enc.tokens[i] for i in range(3)] == list(occupation[:3]), enc.tokens[:3]
res = P.fit({**enc.values, **dec.values}, gender, control="type", types=occupation, mdl=True,
            seeds=2)
print(res.table())

# ground truth for the occupation's embedding: predict each occupation's majority gender
spec = P.TrainSpec()                                           # the split fit() used
order, (n_tr, n_val, n_te) = P.data.split_order(
    len(ex), val_fraction=spec.val_fraction, test_fraction=spec.test_fraction,
    seed=spec.split_seed)
train, test = order[:n_tr], order[n_tr + n_val:]
majority = {o: max("mf", key=lambda g: np.sum((occupation[train] == o) & (gender[train] == g)))
            for o in np.unique(occupation)}
stereo = np.mean([majority[o] == g for o, g in zip(occupation[test], gender[test])])
acc = dict(zip(res.layers, res.accuracy))
print(f"encoder.embed reads the stereotype only: accuracy {acc['encoder.embed']:.3f}, "
      f"majority gender of the occupation {stereo:.3f}")
last_dec = [n for n in res.layers if n.startswith("decoder.blocks")][-1]
print(f"{last_dec}: {acc[last_dec]:.3f}; decoder.embed: {acc['decoder.embed']:.3f} "
      f"(chance {res.chance:.3f})")
assert abs(acc["encoder.embed"] - stereo) < 0.02
assert acc[last_dec] >= 0.99 and acc["decoder.embed"] <= res.chance + 0.02
os.makedirs(args.out, exist_ok=True)
res.save(os.path.join(args.out, "probe.json"))
try:
    res.figure().savefig(os.path.join(args.out, "probe.png"), dpi=120)
except ImportError:
    pass
print("the decoder holds the gender of the translation before writing it")
