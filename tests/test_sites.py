"""Site naming: parsing, listing, glob resolution and the errors (hand-written cases)."""
import pytest

from jaxattr.internals import Site, SiteError, parse_site, resolve_sites, site_names, summarize


def test_parse_round_trip():
    for name in ("embed", "final_norm", "blocks.0.resid_pre", "blocks.11.head_out",
                 "decoder.blocks.2.cross_attn_out", "encoder.embed", "decoder.final_norm"):
        assert parse_site(name).name == name
    assert parse_site("decoder.blocks.3.mlp_out") == Site("decoder", 3, "mlp_out")


@pytest.mark.parametrize("bad", ["blocks.x.mlp_out", "blocks.1.foo", "block.1.mlp_out",
                                 "middle.embed", "blocks.1", ""])
def test_parse_rejects_with_grammar(bad):
    with pytest.raises(SiteError, match="blocks.<layer>.<kind>"):
        parse_site(bad)


def test_site_names_decoder_only_order():
    names = site_names(2, kinds=("resid_pre", "mlp_out", "resid_post"))
    assert names == ("embed", "blocks.0.resid_pre", "blocks.0.mlp_out", "blocks.0.resid_post",
                     "blocks.1.resid_pre", "blocks.1.mlp_out", "blocks.1.resid_post",
                     "final_norm")


def test_site_names_encoder_decoder_cross_attention_only_in_decoder():
    names = site_names({"encoder": 1, "decoder": 1}, kinds=("attn_out", "cross_attn_out"),
                       final_norm={"encoder": False, "decoder": True})
    assert names == ("encoder.embed", "encoder.blocks.0.attn_out", "decoder.embed",
                     "decoder.blocks.0.attn_out", "decoder.blocks.0.cross_attn_out",
                     "decoder.final_norm")


def test_resolve_globs_keep_model_order_and_dedupe():
    names = site_names(3)
    got = resolve_sites(["blocks.2.mlp_out", "blocks.*.mlp_out", "embed"], names)
    assert got == ("embed", "blocks.0.mlp_out", "blocks.1.mlp_out", "blocks.2.mlp_out")


def test_resolve_unknown_lists_valid_names():
    with pytest.raises(SiteError, match=r"blocks\.\{0\.\.2\}\.mlp_out"):
        resolve_sites("blocks.7.mlp_out", site_names(3))


def test_resolve_raw_paths_only_when_allowed():
    names = site_names(1)
    assert resolve_sites(["transformer/h/0/mlp", "embed"], names, allow_raw=True) == (
        "embed", "transformer/h/0/mlp")
    with pytest.raises(SiteError, match="raw module path"):
        resolve_sites("transformer/h/0/mlp", names)


def test_attention_pattern_is_capture_only():
    names = site_names(2)
    assert resolve_sites("blocks.*.attn_pattern", names) == ("blocks.0.attn_pattern",
                                                             "blocks.1.attn_pattern")
    with pytest.raises(SiteError, match="captured but not patched"):
        resolve_sites("blocks.*.attn_pattern", names, patchable=True)


def test_summarize_folds_layers():
    assert summarize(site_names(4, kinds=("mlp_out",))) == (
        "'embed', 'blocks.{0..3}.mlp_out', 'final_norm'")
