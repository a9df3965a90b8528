"""Feature collection (jaxattr.probing.collect_features) on a stand-in model whose
activations are a known function of token id, position and layer."""
import numpy as np
import pytest

from jaxattr.encoding import InputError
from jaxattr.probing import collect_features
from jaxattr.testing import make_tokenizer

SITES = ("embed", "blocks.0.resid_post", "blocks.1.resid_post")
TEXTS = ["Kim has a red ball", "The cat sat on the mat", "Hello world"]


class _Cache:
    def __init__(self, values, tokens, mask):
        self.values, self.tokens, self.mask = values, tokens, mask
        self.source_tokens = self.source_mask = None

    def __getitem__(self, name):
        return self.values[name]


class StandIn:
    """Decoder-only stand-in: ``cache[site][b, l] = [id, l, layer, id * (layer + 1)]``."""

    def __init__(self):
        self.tokenizer = make_tokenizer("bytelevel")
        self.name, self.config, self.calls = "stand-in", None, 0

    def sites(self):
        return SITES

    def run_with_cache(self, input_texts, generated_texts=None, *, sites):
        self.calls += 1
        enc = [self.tokenizer(t)["input_ids"] for t in (generated_texts or input_texts)]
        L = max(map(len, enc))
        ids = np.zeros((len(enc), L), np.int64)
        mask = np.zeros((len(enc), L), np.int64)
        for b, e in enumerate(enc):
            ids[b, :len(e)], mask[b, :len(e)] = e, 1
        pos = np.broadcast_to(np.arange(L), ids.shape)
        values = {s: np.stack([ids, pos, np.full_like(ids, k), ids * (k + 1)], -1)
                  .astype(np.float32) for k, s in enumerate(SITES) if s in sites}
        return None, _Cache(values, ids, mask)


def expect(model, text, rows, layer):
    ids = np.asarray(model.tokenizer(text)["input_ids"], np.float32)
    return np.array([ids[rows].mean(), np.mean(rows), layer, ids[rows].mean() * (layer + 1)],
                    np.float32)


def test_positions_and_select_rows():
    m = StandIn()
    f = collect_features(m, TEXTS, sites="blocks.*.resid_post", positions=[[0, -1], [2], 1],
                         batch_size=2, show_progress=False)
    assert f.sites == SITES[1:] and len(f) == 4
    np.testing.assert_array_equal(f.example, [0, 0, 1, 2])
    n0 = len(m.tokenizer(TEXTS[0])["input_ids"])
    np.testing.assert_array_equal(f.position, [0, n0 - 1, 2, 1])
    for r, (i, p) in enumerate(zip(f.example, f.position)):
        np.testing.assert_array_equal(f.values["blocks.1.resid_post"][r],
                                      expect(m, TEXTS[i], [p], 2))
    assert f.array().shape == (4, 2, 4)
    g = collect_features(m, TEXTS, sites="embed", select=lambda toks: len(toks) - 1,
                         show_progress=False)
    last = [len(m.tokenizer(t)["input_ids"]) - 1 for t in TEXTS]
    np.testing.assert_array_equal(g.position, last)


@pytest.mark.parametrize("pooling", ["first", "last", "mean"])
def test_word_pooling(pooling):
    m = StandIn()
    enc = m.tokenizer(TEXTS[1])
    wid = enc.word_ids()
    word = max(set(w for w in wid if w is not None), key=wid.count)  # its longest word
    rows = [j for j, w in enumerate(wid) if w == word]
    f = collect_features(m, TEXTS[1:2], sites="embed", words=[word], pooling=pooling,
                         show_progress=False)
    span = rows[:1] if pooling == "first" else rows[-1:] if pooling == "last" else rows
    np.testing.assert_allclose(f.values["embed"][0], expect(m, TEXTS[1], span, 0), rtol=1e-6)
    assert f.position[0] == rows[0]


def test_multi_subword_word_is_pooled():
    m = StandIn()
    wid = m.tokenizer("zygomorphic").word_ids()
    assert wid.count(0) > 1          # the stand-in tokenizer splits this word
    f = collect_features(m, ["zygomorphic"], sites="embed", words=0, show_progress=False)
    rows = [j for j, w in enumerate(wid) if w == 0]
    np.testing.assert_allclose(f.values["embed"][0], expect(m, "zygomorphic", rows, 0))
    assert f.tokens[0] == "zygomorphic"


def test_never_recomputed_and_memory_mapped(tmp_path):
    m = StandIn()
    kw = dict(sites=SITES, positions=0, batch_size=2, cache_dir=tmp_path, show_progress=False)
    a = collect_features(m, TEXTS, **kw)
    assert m.calls == 2
    b = collect_features(m, TEXTS, **kw)           # remembered in this process
    assert m.calls == 2 and b is a
    fresh = StandIn()
    c = collect_features(fresh, TEXTS, **kw)        # read back from disk
    assert fresh.calls == 0
    assert isinstance(c.values["embed"], np.memmap)
    for s in SITES:
        np.testing.assert_array_equal(np.asarray(c.values[s]), np.asarray(a.values[s]))
    for f in (a, c):                                # stacked 64-byte aligned (fit: no copy)
        stacked = f.array()
        assert stacked.ctypes.data % 64 == 0
        np.testing.assert_array_equal(stacked, np.stack([np.asarray(f.values[s])
                                                         for s in SITES], axis=1))
    collect_features(fresh, TEXTS, **{**kw, "positions": 1})
    assert fresh.calls == 2                         # another selection is another run


def test_bad_selection_errors():
    m = StandIn()
    with pytest.raises(InputError, match="exactly one of positions"):
        collect_features(m, TEXTS, sites="embed", show_progress=False)
    with pytest.raises(InputError, match="position 50 of example 0 is outside"):
        collect_features(m, TEXTS, sites="embed", positions=50, show_progress=False)
    with pytest.raises(InputError, match="positions has 2 entries for 3 examples"):
        collect_features(m, TEXTS, sites="embed", positions=[1, 2], show_progress=False)
    with pytest.raises(InputError, match="word 9 of example 0 does not exist"):
        collect_features(m, TEXTS, sites="embed", words=9, show_progress=False)
    with pytest.raises(InputError, match="pooling='max'"):
        collect_features(m, TEXTS, sites="embed", words=0, pooling="max", show_progress=False)
