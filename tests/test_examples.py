"""Every example in examples/ runs offline, and what it prints is checked against what it
computed: numbers parsed from its output must hold properties known independently (a saved
file that reloads to the printed value, completeness, vmap == loop, the rows of a dataset)."""
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM = r"([-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)"

pytestmark = pytest.mark.slow  # each example is a fresh process that loads and compiles


def _find(pattern, text):
    found = re.findall(pattern, text)
    assert found, f"{pattern!r} not in the output:\n{text[-2000:]}"
    return found


def check_quickstart(out, tmp):
    import jaxattr
    (p, delta, top, cue), = [(float(a), float(b), int(c), int(d)) for a, b, c, d in _find(
        rf"p = {NUM}; completeness delta {NUM}; most important input token: .* at (\d+) "
        r"\(true cue at (\d+)\)", out)]
    assert 0 < p <= 1 and abs(delta) <= 0.1 * p   # IG at 64 steps adds up
    assert top == cue                               # the trained model reads the cue
    back = jaxattr.load(os.path.join(tmp, "recall.json"))
    assert abs(float(back[0].step_scores["probability"][0]) - p) < 5e-4  # the printed value


def check_contrastive(out, tmp):
    answers = _find(r"'(\w+)' rather than '\w+': top input tokens (.*)", out)
    for answer, tops in answers:
        assert f"'{answer}'" in tops              # the answer's own mention matters
    diffs = [float(v) for v in _find(rf"p\(answer\) - p\(foil\) = {NUM}", out)]
    assert len(diffs) == len(answers) and all(0.5 < d <= 1 for d in diffs)


def check_gender_bias(out, tmp):
    (right, n), = [(int(a), int(b)) for a, b in _find(
        r"article translated with the right gender: (\d+)/(\d+)", out)]
    (wins, n2), = [(int(a), int(b)) for a, b in _find(
        r"pronoun attributed more than the occupation: (\d+)/(\d+)", out)]
    assert n == n2 == 16 and 0 <= right <= n and 0 <= wins <= n
    assert wins >= right // 2  # where the model gets the gender right it reads the pronoun


def check_vmap_functional(out, tmp):
    (n, hits, total), = [(int(a), int(b), int(c)) for a, b, c in _find(
        r"attributed (\d+) prompts in one vmapped call; the top token is the true cue in "
        r"(\d+)/(\d+)", out)]
    assert n == total == 32 and hits >= total // 2
    (diff,), = [(float(d),) for d in _find(rf"max \|vmapped - one prompt at a time\| = {NUM}",
                                           out)]
    assert diff <= 1e-5


def check_research_composition(out, tmp):
    (share,), = [(float(s),) for s in _find(rf"cue share {NUM};", out)]
    (norm,), = [(float(g),) for g in _find(rf"gradient norm {NUM}\)", out)]
    assert 0 < share < 1 and 0 < norm < float("inf")


def check_attribute_dataset(out, tmp):
    (results, errors), = [(int(a), int(b)) for a, b in _find(
        r"(\d+) results and (\d+) reported error\(s\)", out)]
    assert (results, errors) == (12, 1)  # 12 recall rows and the one bad row it wrote
    rows = [json.loads(line) for line in open(os.path.join(tmp, "attributions.jsonl"))]
    assert sorted(r["index"] for r in rows) == list(range(13))  # resuming added nothing
    assert [r["index"] for r in rows if "error" in r] == [12]


def check_pecore_demo(out, tmp):
    rows = _find(rf"\| (\w+) \| (\w+) \| {NUM}% \| {NUM}% \| {NUM}% \|", out)
    assert len(rows) == 3
    for _, _, hit, prec, top1 in rows:
        assert all(0 <= float(v) <= 100 for v in (hit, prec, top1))
    # CTI (kl_divergence, the same threshold) does not depend on the CCI method: one hit rate
    assert len({(hit, prec) for _, _, hit, prec, _ in rows}) == 1


def check_probing_gender(out, tmp):
    (emb, stereo), = [(float(a), float(b)) for a, b in _find(
        rf"encoder.embed reads the stereotype only: accuracy {NUM}, majority gender of the "
        rf"occupation {NUM}", out)]
    (last, dec_emb, chance), = [(float(a), float(b), float(c)) for a, b, c in _find(
        rf": {NUM}; decoder.embed: {NUM} \(chance {NUM}\)", out)]
    assert abs(emb - stereo) < 0.02              # the occupation's embedding: its stereotype
    assert last >= 0.99 and dec_emb <= chance + 0.02
    assert os.path.exists(os.path.join(tmp, "probe.json"))


def check_factual_knowledge(out, tmp):
    n, = _find(r"(\d+) held-out prompts answered right", out)
    assert int(n) >= 1
    clean, noised = (float(v) for v in _find(
        rf"p\(answer\): clean {NUM}, subject noised {NUM}", out)[0])
    assert clean > noised
    # restoring the last token's block output at the last layer restores the whole final
    # state there: its indirect effect is exactly clean - noised (to the printed rounding)
    block = out.split("average indirect effect (hidden state)")[1].split("p(answer)")[0]
    last_row = [l for l in block.splitlines() if l.startswith("last (")][0]
    assert abs(float(last_row.split()[-1]) - (clean - noised)) <= 0.003
    for v in _find(rf"(?:hidden|mlp|attn) +{NUM}\n", out):
        assert -1.0 <= float(v) <= 1.0                      # Spearman correlations


def check_gender_bias_study(out, tmp):
    from jaxattr.zoo import tasks
    rows = _find(r"\| (\w+) \| ([0-9.]+) \| ([0-9.]+) \| (.+) \|\n", out)
    assert {r[0] for r in rows} == set(tasks.OCCUPATIONS)
    for occ, skew, p_fem, cells in rows:
        # the corpus skew is known from the generator: 0.84 feminine-stereotyped, else 0.16
        assert float(skew) == (0.84 if tasks.OCCUPATIONS[occ][1] == "f" else 0.16)
        assert 0.0 <= float(p_fem) <= 1.0
        for pair in cells.split(" | "):
            occ_share, art_share = (float(v) for v in pair.split(" / "))
            assert 0.0 <= occ_share and 0.0 <= art_share and occ_share + art_share <= 1.0001
    taus = _find(rf"Kendall τ-b vs training skew\*\* \| 1 \| {NUM}", out)
    assert -1.0 <= float(taus[0]) <= 1.0
    for block in _find(r"summed log-share NIE per block: (.+)\n", out):
        assert all(abs(float(v.split()[-1])) < 10 for v in block.split(", "))


ARGS = {"quickstart.py": ["--out", "{tmp}"], "attribute_dataset.py": ["--out", "{tmp}"],
        "probing_gender.py": ["--out", "{tmp}"], "pecore_demo.py": ["--n", "40"],
        # one traced prompt (averaging over prompts: test_interventions, test_toy_facts), and
        # one adjective per occupation: the checks do not depend on how many are averaged
        "factual_knowledge.py": ["--n", "1", "--samples", "3"],
        "gender_bias_study.py": ["--adjectives", "1"]}

CHECKS = {name[len("check_"):] + ".py": fn for name, fn in globals().items()
          if name.startswith("check_")}


def test_every_example_is_checked():
    assert sorted(CHECKS) == sorted(f for f in os.listdir(os.path.join(ROOT, "examples"))
                                    if f.endswith(".py") and not f.startswith("train_"))


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_example_runs(name, tmp_path):
    args = [sys.executable, os.path.join(ROOT, "examples", name)]
    args += [a.format(tmp=tmp_path) for a in ARGS.get(name, [])]
    res = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    CHECKS[name](res.stdout, str(tmp_path))
