"""Executable spec: re-derive Inseq's raw attributions with plain torch autograd (no Inseq/Captum
in the math) and compare with the reference file. Run in the SIDE env:

    /work/inseq-venv/bin/python benchmarks/inseq_side/verify_recipe.py CKPT_DIR REF.npz

Checks GPT-2 seq 0 (saliency, input_x_gradient, IG, saliency+contrast_prob_diff) and
Marian seq 0 (bs1 calls, source+target), printing max relative errors (expected ~1e-6).
"""
import sys
import numpy as np, json, torch, warnings, logging
warnings.filterwarnings("ignore"); logging.disable(logging.WARNING)
from transformers import AutoTokenizer, AutoModelForCausalLM, AutoModelForSeq2SeqLM
import inseq
D=sys.argv[1]
z=np.load(sys.argv[2], allow_pickle=False); meta=json.loads(str(z["__meta__"]))
# baselines as Inseq builds them
g=inseq.load_model(D+"/gpt2","saliency"); m=inseq.load_model(D+"/marian","saliency")
e=g.encode(["The cat sat on the mat.", "Hello"], return_baseline=True)
print("gpt2 padding side", g.tokenizer.padding_side, "ids", e.input_ids.tolist(), "baseline", e.baseline_ids.tolist(), "unk", g.tokenizer.unk_token_id, "eos", g.eos_token_id, "pad", g.pad_token, "bos", g.bos_token_id)
e=m.encode(["The cat sat.", "Hello world, this is"], return_baseline=True)
print("marian src ids", e.input_ids.tolist(), "baseline", e.baseline_ids.tolist(), "mask", e.attention_mask.tolist())
e=m.encode(["ethay atcay", "ellohay orldway, isthay"], as_targets=True, return_baseline=True)
print("marian tgt ids", e.input_ids.tolist(), "baseline", e.baseline_ids.tolist(), "mask", e.attention_mask.tolist())
print("marian embed_scale", m.embed_scale, "gpt2 embed_scale", g.embed_scale)

xs, ws = np.polynomial.legendre.leggauss(64)
alphas = torch.tensor(0.5*(xs+1)); steps = torch.tensor(0.5*ws)

# ---- GPT-2 manual ----
tok=AutoTokenizer.from_pretrained(D+"/gpt2"); M=AutoModelForCausalLM.from_pretrained(D+"/gpt2").eval()
ids=tok("The cat sat on the mat and looked at the dog.", return_tensors="pt").input_ids
npr=len(tok("The cat sat on the").input_ids)
W=M.get_input_embeddings().weight
def gpt2_grad(emb, t):  # emb [B,t,H] prefix embeddings, predict ids[0,t]
    emb=emb.detach().requires_grad_(True)
    p=M(inputs_embeds=emb).logits[:, -1].softmax(-1)[:, ids[0, t]]
    p.sum().backward(); return emb.grad
sal=np.full((ids.shape[1], ids.shape[1]-npr, 32), np.nan, np.float32); ixg=sal.copy(); ig=sal.copy()
for col, t in enumerate(range(npr, ids.shape[1])):
    x=W[ids[:, :t]].detach()
    gr=gpt2_grad(x, t)[0]
    sal[:t, col]=gr.abs().numpy(); ixg[:t, col]=(gr*x[0]).numpy()
    base=W[torch.full_like(ids[:, :t], tok.unk_token_id)].detach()
    path=base+alphas.float()[:,None,None]*(x-base)
    gp=gpt2_grad(path, t)
    ig[:t, col]=((x-base)[0]*(steps.float()[:,None,None]*gp).sum(0)).numpy()
for nm, a in [("saliency",sal),("input_x_gradient",ixg),("integrated_gradients",ig)]:
    r=z[f"gpt2/{nm}/0/target_attributions"]
    print("gpt2", nm, "nan-equal", (np.isnan(r)==np.isnan(a)).all(), "max rel err %.2e"%(np.nanmax(np.abs(r-a))/np.nanmax(np.abs(r))))

# ---- Marian manual (Inseq convention: embeds*scale fed as inputs_embeds AND decoder_inputs_embeds) ----
tok=AutoTokenizer.from_pretrained(D+"/marian"); M=AutoModelForSeq2SeqLM.from_pretrained(D+"/marian").eval()
src=tok("The cat sat on the mat.", return_tensors="pt").input_ids
lab=tok(text_target="ethay atcay atsay onway ethay atmay.", return_tensors="pt").input_ids
tgt=torch.cat([torch.tensor([[M.config.decoder_start_token_id]]), lab], 1)  # <pad> ... </s>
W=M.get_input_embeddings().weight; sc=M.model.encoder.embed_scale
unk=tok.unk_token_id; eos=0
def m_grad(se, te, t):
    se=se.detach().requires_grad_(True); te=te.detach().requires_grad_(True)
    p=M(inputs_embeds=se, decoder_inputs_embeds=te).logits[:, -1].softmax(-1)[:, tgt[0, t]]
    p.sum().backward(); return se.grad, te.grad
S=src.shape[1]; T=tgt.shape[1]
res={k:(np.full((S,T-1,32),np.nan,np.float32), np.full((T,T-1,32),np.nan,np.float32)) for k in ["saliency","input_x_gradient","integrated_gradients"]}
sbase_ids=torch.where(src==eos, eos, unk)
for col, t in enumerate(range(1, T)):
    xs_=W[src].detach()*sc; xt=W[tgt[:, :t]].detach()*sc
    gs, gt = m_grad(xs_, xt, t)
    res["saliency"][0][:, col]=gs[0].abs().numpy(); res["saliency"][1][:t, col]=gt[0].abs().numpy()
    res["input_x_gradient"][0][:, col]=(gs*xs_)[0].numpy(); res["input_x_gradient"][1][:t, col]=(gt*xt)[0].numpy()
    tb_ids=tgt[:, :t].clone(); tb_ids[:, 1:]=torch.where(tb_ids[:, 1:]==eos, eos, unk)
    bs=W[sbase_ids].detach()*sc; bt=W[tb_ids].detach()*sc
    a=alphas.float()[:,None,None]
    gs, gt = m_grad(bs+a*(xs_-bs), bt+a*(xt-bt), t)
    res["integrated_gradients"][0][:, col]=((xs_-bs)[0]*(steps.float()[:,None,None]*gs).sum(0)).numpy()
    res["integrated_gradients"][1][:t, col]=((xt-bt)[0]*(steps.float()[:,None,None]*gt).sum(0)).numpy()
for nm,(a_s,a_t) in res.items():
    for side,a in [("source",a_s),("target",a_t)]:
        r=z[f"marian/{nm}_bs1/0/{side}_attributions"]
        print("marian", nm, side, "nan-equal", (np.isnan(r)==np.isnan(a)).all(), "max rel err %.2e"%(np.nanmax(np.abs(r-a))/np.nanmax(np.abs(r))))

# ---- GPT-2 contrast_prob_diff: p(y_t | y_<t) - p(c_t | y_<t) (ORIGINAL prefix, contrast token only) ----
tok=AutoTokenizer.from_pretrained(D+"/gpt2"); M=AutoModelForCausalLM.from_pretrained(D+"/gpt2").eval()
ids=tok(meta["inputs"]["gpt2_contrast_target"], return_tensors="pt").input_ids
cids=tok(meta["inputs"]["gpt2_contrast"], return_tensors="pt").input_ids
npr=len(tok(meta["inputs"]["gpt2_contrast_prompt"]).input_ids); W=M.get_input_embeddings().weight
out=np.full((ids.shape[1], ids.shape[1]-npr, 32), np.nan, np.float32)
for col,t in enumerate(range(npr, ids.shape[1])):
    x=W[ids[:, :t]].detach().requires_grad_(True)
    p=M(inputs_embeds=x).logits[0,-1].softmax(-1)
    (p[ids[0,t]]-p[cids[0,t]]).backward(); out[:t,col]=x.grad[0].abs().numpy()
r=z["gpt2/saliency_contrast_prob_diff/0/target_attributions"]
print("gpt2 saliency contrast_prob_diff nan-equal", (np.isnan(out)==np.isnan(r)).all(), "max rel err %.2e"%(np.nanmax(np.abs(out-r))/np.nanmax(r)))
