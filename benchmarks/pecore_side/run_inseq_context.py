"""Inseq 0.7.1 ``attribute-context`` (PECoRe) records on the tiny checkpoints of
``benchmarks/inseq_side`` (decoder-only GPT-2 and encoder-decoder Marian), forced and generated
outputs. Run once in the SIDE env (torch + inseq 0.7.1):

    /work/inseq-venv/bin/python benchmarks/pecore_side/run_inseq_context.py \
        benchmarks/inseq_side/tiny_ckpt benchmarks/pecore_side/inseq_context_reference.json

Each case records its arguments and Inseq's ``AttributeContextOutput.to_dict()`` (``info``
reduced to the arguments). ``tests/test_context_inseq.py`` replays the cases with jaxattr.

Marian: transformers 4.57.6's PyTorch ``MarianDecoder`` multiplies ``inputs_embeds`` by
``embed_scale`` unconditionally, and Inseq feeds already-scaled embeddings, so attribution runs
a decoder whose inputs are scaled twice while generation (ids) scales once (see
``benchmarks/inseq_side/CONVENTIONS.md``). Here the decoder's own scaling is moved into an id
lookup wrapper, so ids and Inseq's scaled embeddings both see the true model, the one Flax runs.
"""
from __future__ import annotations

import json
import sys

import torch

GPT2_CTX = "The cat sat on the mat and looked at the dog."
GPT2_CUR = "The dog is happy because"
GPT2_OUT = "it has a new ball and the cat is sad."
MT_CTX = "The dog is happy because it has a new ball."
MT_CUR = "The cat sat on the mat."
MT_OUT = "ethay atcay atsay onway ethay atmay."

CASES = [
    # name, model, kwargs for AttributeContextArgs
    ("gpt2/forced_probability", "gpt2", dict(
        input_context_text=GPT2_CTX, input_current_text=GPT2_CUR, output_current_text=GPT2_OUT,
        context_sensitivity_std_threshold=0.0)),
    ("gpt2/forced_contrast_prob_diff", "gpt2", dict(
        input_context_text=GPT2_CTX, input_current_text=GPT2_CUR, output_current_text=GPT2_OUT,
        attributed_fn="contrast_prob_diff", context_sensitivity_std_threshold=0.0)),
    ("gpt2/forced_default_threshold", "gpt2", dict(
        input_context_text=GPT2_CTX, input_current_text=GPT2_CUR, output_current_text=GPT2_OUT)),
    ("gpt2/generated_contrast_prob_diff_ixg", "gpt2", dict(
        input_context_text=GPT2_CTX, input_current_text=GPT2_CUR,
        attributed_fn="contrast_prob_diff", attribution_method="input_x_gradient",
        context_sensitivity_std_threshold=0.0, generation_kwargs={"max_new_tokens": 8})),
    ("gpt2/forced_output_context_topk", "gpt2", dict(
        input_context_text=GPT2_CTX, input_current_text=GPT2_CUR,
        output_context_text="She sells sea shells.", output_current_text=GPT2_OUT,
        context_sensitivity_std_threshold=0.0, context_sensitivity_topk=3)),
    ("gpt2/forced_kl_attributed", "gpt2", dict(
        input_context_text=GPT2_CTX, input_current_text=GPT2_CUR, output_current_text=GPT2_OUT,
        attributed_fn="kl_divergence", context_sensitivity_std_threshold=0.5,
        context_sensitivity_metric="pcxmi")),
    ("marian/forced_probability", "marian", dict(
        input_context_text=MT_CTX, input_current_text=MT_CUR, output_current_text=MT_OUT,
        context_sensitivity_std_threshold=0.0)),
    ("marian/forced_contrast_prob_diff", "marian", dict(
        input_context_text=MT_CTX, input_current_text=MT_CUR, output_current_text=MT_OUT,
        attributed_fn="contrast_prob_diff", context_sensitivity_std_threshold=0.0)),
    ("marian/generated_contrast_prob_diff_ixg", "marian", dict(
        input_context_text=MT_CTX, input_current_text=MT_CUR,
        attributed_fn="contrast_prob_diff", attribution_method="input_x_gradient",
        context_sensitivity_std_threshold=0.0, generation_kwargs={"max_new_tokens": 8})),
    ("marian/forced_output_context", "marian", dict(
        input_context_text=MT_CTX, input_current_text=MT_CUR,
        output_context_text="ethay ogday isway appyhay.", output_current_text=MT_OUT,
        context_sensitivity_std_threshold=0.0)),
]


def fix_marian_scale(model) -> None:
    """Scale decoder embeddings once on both paths (ids and inputs_embeds)."""
    dec = model.model.get_decoder()
    scale = dec.embed_scale
    dec.embed_scale = 1.0
    orig = dec.forward

    def forward(*args, **kwargs):
        if args:
            kwargs["input_ids"] = args[0]
            args = args[1:]
        ids = kwargs.get("input_ids")
        if ids is not None and kwargs.get("inputs_embeds") is None:
            kwargs["inputs_embeds"] = dec.embed_tokens(ids) * scale
            kwargs["input_ids"] = None
        return orig(*args, **kwargs)

    dec.forward = forward


def main():
    if len(sys.argv) != 3:
        raise SystemExit(f"usage: {sys.argv[0]} CKPT_DIR OUT.json")
    ckpt, out_path = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    import inseq
    import transformers
    from inseq.commands.attribute_context.attribute_context import attribute_context_with_model
    from inseq.commands.attribute_context.attribute_context_args import AttributeContextArgs

    models = {}
    records = {"versions": {"inseq": __import__("importlib.metadata").metadata.version("inseq"), "torch": torch.__version__,
                            "transformers": transformers.__version__}, "cases": []}
    for name, arch, kwargs in CASES:
        method = kwargs.get("attribution_method", "saliency")
        key = (arch, method)
        if key not in models:
            models[key] = inseq.load_model(f"{ckpt}/{arch}", method)
            if arch == "marian":
                fix_marian_scale(models[key])
        model = models[key]
        # Inseq's __post_init__ reads output_template before filling its default when the
        # strategy is "pre", so the default is given here.
        kwargs = dict(kwargs)
        kwargs.setdefault("output_template", "{context} {current}"
                          if kwargs.get("output_context_text") else "{current}")
        args = AttributeContextArgs(model_name_or_path=f"{ckpt}/{arch}", show_viz=False,
                                    handle_output_context_strategy="pre", **kwargs)
        out = attribute_context_with_model(args, model)
        d = out.to_dict()
        d.pop("info", None)
        records["cases"].append({"name": name, "model": arch, "kwargs": kwargs, "output": d})
        print(name, "selected", [c["cti_idx"] for c in d["cci_scores"]], flush=True)
    with open(out_path, "w") as f:
        json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
