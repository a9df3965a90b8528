"""Produce raw Inseq 0.7.1 reference attributions on the tiny checkpoints.

Run in the SIDE env (see setup_side_env.sh):

    /work/inseq-venv/bin/python benchmarks/inseq_side/run_inseq.py CKPT_DIR OUT_FILE.npz

CKPT_DIR is the output of make_tiny_checkpoints.py (with gpt2/ and marian/).

Output: one .npz (load with np.load(path, allow_pickle=False)):
  * key "__meta__": a JSON string (np.str_) with
      {"versions": {...}, "calls": [ {call_id, model, method, kwargs, input_texts,
        generated_texts, info, sequences: [ {source, target, shapes, attr_pos_start,
        attr_pos_end, step_score_names} ... ]} ... ],
       "hf_reference": {...}}
    where source/target are lists of [token, id] pairs exactly as Inseq returns them.
  * per call and sequence i, arrays (float32, NaNs preserved, NOT aggregated,
    i.e. the full per-hidden-unit tensors Inseq stores):
      "{call_id}/{i}/source_attributions"   [src_len, n_attributed_steps, hidden]  (Marian only)
      "{call_id}/{i}/target_attributions"   [tgt_len, n_attributed_steps, hidden]
      "{call_id}/{i}/step_scores/{name}"    [n_attributed_steps]
  * call ids "marian_fixedscale/*": same as "marian/*" but with the PyTorch decoder's
    extra embed_scale multiplication disabled (see comment in main()).
  * "hf/{model}/{i}/probs": per-step probabilities of the forced tokens from a plain
    Hugging Face forward (input_ids, no Inseq), for comparison with Inseq's
    "probability" step score.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

N_STEPS = 64

GPT2_PROMPTS = [
    "The cat sat on the",
    "Hello world, this is",
    "Birds fly south when",
]
GPT2_GENERATED = [
    "The cat sat on the mat and looked at the dog.",
    "Hello world, this is a tiny test.",
    "Birds fly south when the winter comes.",
]
# Contrast for GPT-2: same prompt, a different continuation with the same number of
# generated tokens as GPT2_GENERATED[0] (checked at runtime).
GPT2_CONTRAST_PROMPT = GPT2_PROMPTS[0]
GPT2_CONTRAST_TARGET = GPT2_GENERATED[0]

MARIAN_SOURCES = [
    "The cat sat on the mat.",
    "Hello world, this is a tiny test.",
    "Birds fly south when the winter comes.",
]
MARIAN_TARGETS = [
    "ethay atcay atsay onway ethay atmay.",
    "ellohay orldway, isthay isway away inytay esttay.",
    "irdsbay lyfay outhsay enwhay ethay interway omescay.",
]


def _to_np(t):
    if t is None:
        return None
    return t.detach().cpu().to(torch.float32).numpy()


def _tok_list(toks):
    if toks is None:
        return None
    return [[t.token, int(t.id)] for t in toks]


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if hasattr(x, "__name__"):
        return x.__name__
    return repr(x)


class Recorder:
    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}
        self.calls: list[dict] = []

    def record(self, call_id, model_name, method, kwargs, out, error=None):
        entry = {
            "call_id": call_id,
            "model": model_name,
            "method": method,
            "kwargs": _jsonable(kwargs),
        }
        if error is not None:
            entry["error"] = error
            self.calls.append(entry)
            print(f"[{call_id}] ERROR: {error}")
            return
        info = {k: _jsonable(v) for k, v in out.info.items() if k not in ("exec_time",)}
        entry["info"] = info
        entry["input_texts"] = out.info.get("input_texts")
        entry["generated_texts"] = out.info.get("generated_texts")
        seqs = []
        for i, s in enumerate(out.sequence_attributions):
            rec = {
                "source": _tok_list(s.source),
                "target": _tok_list(s.target),
                "attr_pos_start": int(s.attr_pos_start) if s.attr_pos_start is not None else None,
                "attr_pos_end": int(s.attr_pos_end) if s.attr_pos_end is not None else None,
                "shapes": {},
                "step_score_names": sorted((s.step_scores or {}).keys()),
            }
            for name in ("source_attributions", "target_attributions"):
                arr = _to_np(getattr(s, name))
                rec["shapes"][name] = None if arr is None else list(arr.shape)
                if arr is not None:
                    self.arrays[f"{call_id}/{i}/{name}"] = arr
                    rec[f"{name}_nan_any_per_row"] = np.isnan(arr).any(-1).astype(int).tolist()
            for k, v in (s.step_scores or {}).items():
                arr = _to_np(v)
                self.arrays[f"{call_id}/{i}/step_scores/{k}"] = arr
                rec["shapes"][f"step_scores/{k}"] = list(arr.shape)
            seqs.append(rec)
        entry["sequences"] = seqs
        self.calls.append(entry)
        print(f"[{call_id}] ok: " + "; ".join(
            f"seq{i} src={r['shapes'].get('source_attributions')} tgt={r['shapes'].get('target_attributions')}"
            for i, r in enumerate(seqs)))


def run_call(rec: Recorder, model, model_name, call_id, method, **kwargs):
    try:
        out = model.attribute(method=method, show_progress=False, **kwargs)
    except Exception as e:  # keep going, record the failure (e.g. unsupported setting)
        rec.record(call_id, model_name, method, kwargs, None, error=f"{type(e).__name__}: {e}")
        return None
    rec.record(call_id, model_name, method, kwargs, out)
    return out


def hf_reference_probs(ckpt_dir, rec: Recorder):
    """Plain HF forward (token ids, no Inseq): probability of each forced token."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    ref = {}
    tok = AutoTokenizer.from_pretrained(f"{ckpt_dir}/gpt2")
    m = AutoModelForCausalLM.from_pretrained(f"{ckpt_dir}/gpt2").eval()
    ref["gpt2"] = []
    for i, (p, g) in enumerate(zip(GPT2_PROMPTS, GPT2_GENERATED)):
        ids = tok(g, return_tensors="pt").input_ids
        n_prompt = tok(p, return_tensors="pt").input_ids.shape[1]
        with torch.no_grad():
            probs = m(ids).logits.softmax(-1)[0]
        tgt = ids[0, n_prompt:]
        pr = probs[n_prompt - 1 : -1].gather(-1, tgt[:, None])[:, 0]
        rec.arrays[f"hf/gpt2/{i}/probs"] = pr.numpy().astype(np.float32)
        ref["gpt2"].append({"ids": ids[0].tolist(), "n_prompt": n_prompt})
    tok = AutoTokenizer.from_pretrained(f"{ckpt_dir}/marian")
    m = AutoModelForSeq2SeqLM.from_pretrained(f"{ckpt_dir}/marian").eval()
    ref["marian"] = []
    for i, (s, t) in enumerate(zip(MARIAN_SOURCES, MARIAN_TARGETS)):
        enc = tok(s, return_tensors="pt")
        lab = tok(text_target=t, return_tensors="pt").input_ids
        dec = torch.cat([torch.tensor([[m.config.decoder_start_token_id]]), lab[:, :-1]], 1)
        with torch.no_grad():
            probs = m(**enc, decoder_input_ids=dec).logits.softmax(-1)[0]
            # Same forward, but through inputs_embeds = embed(ids) * embed_scale as Inseq does.
            scale = m.model.encoder.embed_scale
            emb = m.get_input_embeddings()
            probs_emb = m(
                inputs_embeds=emb(enc.input_ids) * scale,
                attention_mask=enc.attention_mask,
                decoder_inputs_embeds=emb(dec) * scale,
            ).logits.softmax(-1)[0]
        rec.arrays[f"hf/marian/{i}/probs"] = probs.gather(-1, lab[0][:, None])[:, 0].numpy().astype(np.float32)
        rec.arrays[f"hf/marian/{i}/probs_via_scaled_inputs_embeds"] = (
            probs_emb.gather(-1, lab[0][:, None])[:, 0].numpy().astype(np.float32)
        )
        ref["marian"].append({"src_ids": enc.input_ids[0].tolist(), "labels": lab[0].tolist()})
    return ref


def main():
    if len(sys.argv) != 3:
        raise SystemExit(f"usage: {sys.argv[0]} CKPT_DIR OUT_FILE.npz")
    ckpt, out_file = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    import captum
    import inseq
    import transformers

    rec = Recorder()
    base_methods = {
        "saliency": {},
        "input_x_gradient": {},
        "integrated_gradients": {"n_steps": N_STEPS},
    }

    # ---------------- GPT-2 (decoder-only) ----------------
    gpt2 = inseq.load_model(f"{ckpt}/gpt2", "saliency")
    for method, extra in base_methods.items():
        # Batched call (Inseq forces batch_size=1 internally for decoder-only + generated_texts).
        run_call(rec, gpt2, "gpt2", f"gpt2/{method}", method,
                 input_texts=GPT2_PROMPTS, generated_texts=GPT2_GENERATED,
                 step_scores=["probability"], **extra)
    # Inseq 0.7.1 has no "logprob" step function: log-probability is
    # attributed_fn="probability" with logprob=True. Passed via attributed_fn_args it only
    # affects the attributed function...
    run_call(rec, gpt2, "gpt2", "gpt2/saliency_logprob", "saliency",
             input_texts=GPT2_PROMPTS, generated_texts=GPT2_GENERATED,
             step_scores=["probability"], attributed_fn="probability",
             attributed_fn_args={"logprob": True})
    # ...while as a plain kwarg it is routed to BOTH the attributed fn and the
    # "probability" step score (which then holds log-probabilities).
    run_call(rec, gpt2, "gpt2", "gpt2/saliency_logprob_kwarg", "saliency",
             input_texts=GPT2_PROMPTS[0], generated_texts=GPT2_GENERATED[0],
             step_scores=["probability"], attributed_fn="probability", logprob=True)
    # Unknown step-function name, recorded to document the error.
    run_call(rec, gpt2, "gpt2", "gpt2/saliency_attributed_fn_logprob_name", "saliency",
             input_texts=GPT2_PROMPTS[0], generated_texts=GPT2_GENERATED[0],
             attributed_fn="logprob")
    # Contrastive: find a contrast continuation with the same total token length.
    tok = gpt2.tokenizer
    n_gen = len(tok(GPT2_CONTRAST_TARGET).input_ids)
    contrast = None
    for cont in [" mat and looked at the cat.", " dog and looked at the mat.", " mat and sat on the dog.",
                 " sun and looked at the dog.", " mat and walked to the dog."]:
        cand = GPT2_CONTRAST_PROMPT + cont
        if len(tok(cand).input_ids) == n_gen and cand != GPT2_CONTRAST_TARGET:
            contrast = cand
            break
    assert contrast is not None, "no equal-length contrast found"
    run_call(rec, gpt2, "gpt2", "gpt2/saliency_contrast_prob_diff", "saliency",
             input_texts=GPT2_CONTRAST_PROMPT, generated_texts=GPT2_CONTRAST_TARGET,
             step_scores=["probability"], attributed_fn="contrast_prob_diff",
             contrast_targets=contrast)
    # IG with contrast is documented as unsupported by Inseq; record what happens.
    run_call(rec, gpt2, "gpt2", "gpt2/ig_contrast_prob_diff", "integrated_gradients",
             input_texts=GPT2_CONTRAST_PROMPT, generated_texts=GPT2_CONTRAST_TARGET,
             attributed_fn="contrast_prob_diff", contrast_targets=contrast, n_steps=N_STEPS)

    # ---------------- Marian (encoder-decoder) ----------------
    marian = inseq.load_model(f"{ckpt}/marian", "saliency")
    for method, extra in base_methods.items():
        # Batched (all 3 sentences in one padded batch: Inseq default when batch_size=None).
        run_call(rec, marian, "marian", f"marian/{method}", method,
                 input_texts=MARIAN_SOURCES, generated_texts=MARIAN_TARGETS,
                 attribute_target=True, step_scores=["probability"], **extra)
        # Same, one sentence per forward (batch_size=1): shows whether padding changes numbers.
        run_call(rec, marian, "marian", f"marian/{method}_bs1", method,
                 input_texts=MARIAN_SOURCES, generated_texts=MARIAN_TARGETS,
                 attribute_target=True, step_scores=["probability"], batch_size=1, **extra)
    run_call(rec, marian, "marian", "marian/saliency_no_attribute_target", "saliency",
             input_texts=MARIAN_SOURCES[0], generated_texts=MARIAN_TARGETS[0],
             attribute_target=False, step_scores=["probability"])
    run_call(rec, marian, "marian", "marian/saliency_logprob", "saliency",
             input_texts=MARIAN_SOURCES, generated_texts=MARIAN_TARGETS,
             attribute_target=True, step_scores=["probability"], attributed_fn="probability",
             attributed_fn_args={"logprob": True})
    mtok = marian.tokenizer
    n_t = len(mtok(text_target=MARIAN_TARGETS[0]).input_ids)
    m_contrast = None
    for cand in ["ethay ogday atsay onway ethay atmay.", "ethay atcay atsay onway ethay ogday.",
                 "away atcay atsay onway ethay atmay.", "ethay atcay atsay inway ethay atmay."]:
        if len(mtok(text_target=cand).input_ids) == n_t and cand != MARIAN_TARGETS[0]:
            m_contrast = cand
            break
    assert m_contrast is not None, "no equal-length marian contrast found"
    run_call(rec, marian, "marian", "marian/saliency_contrast_prob_diff", "saliency",
             input_texts=MARIAN_SOURCES[0], generated_texts=MARIAN_TARGETS[0],
             attribute_target=True, step_scores=["probability"], attributed_fn="contrast_prob_diff",
             contrast_targets=m_contrast)
    run_call(rec, marian, "marian", "marian/ig_contrast_prob_diff", "integrated_gradients",
             input_texts=MARIAN_SOURCES[0], generated_texts=MARIAN_TARGETS[0],
             attribute_target=True, attributed_fn="contrast_prob_diff", contrast_targets=m_contrast,
             n_steps=N_STEPS)

    # ---------------- Marian with the decoder double-scaling neutralised ----------------
    # Inseq feeds decoder_inputs_embeds = embed(ids) * embed_scale, and transformers 4.57's
    # PyTorch MarianDecoder multiplies inputs_embeds by embed_scale AGAIN (unconditionally),
    # so the "marian/*" calls above run the decoder on embeddings scaled by d_model instead
    # of sqrt(d_model). Setting decoder.embed_scale = 1.0 after loading makes the decoder see
    # embed(ids) * sqrt(d_model) once, i.e. the true model: these are the references a
    # faithful implementation of the *model* should match.
    marian_fixed = inseq.load_model(f"{ckpt}/marian", "saliency")
    marian_fixed.model.get_decoder().embed_scale = 1.0
    for method, extra in base_methods.items():
        run_call(rec, marian_fixed, "marian_fixedscale", f"marian_fixedscale/{method}", method,
                 input_texts=MARIAN_SOURCES, generated_texts=MARIAN_TARGETS,
                 attribute_target=True, step_scores=["probability"], **extra)

    hf_ref = hf_reference_probs(ckpt, rec)
    meta = {
        "versions": {
            "inseq": getattr(inseq, "__version__", "0.7.1"),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "captum": captum.__version__,
        },
        "inputs": {
            "gpt2_prompts": GPT2_PROMPTS, "gpt2_generated": GPT2_GENERATED,
            "gpt2_contrast_prompt": GPT2_CONTRAST_PROMPT, "gpt2_contrast_target": GPT2_CONTRAST_TARGET,
            "gpt2_contrast": contrast,
            "marian_sources": MARIAN_SOURCES, "marian_targets": MARIAN_TARGETS,
            "marian_contrast": m_contrast,
        },
        "calls": rec.calls,
        "hf_reference": hf_ref,
    }
    arrays = dict(rec.arrays)
    arrays["__meta__"] = np.array(json.dumps(meta))
    np.savez_compressed(out_file, **arrays)
    print(f"saved {len(rec.arrays)} arrays + meta -> {out_file}")


if __name__ == "__main__":
    main()
