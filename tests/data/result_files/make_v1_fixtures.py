# Wrote the *_v1 fixtures with the save code of main at e440ed4 (before the shared npz_store);
# tests/test_npz_store.py checks they still load. Do not regenerate with newer code.
import numpy as np
from jaxattr.interventions.results import PatchingResult, MediationResult
from jaxattr.evaluate.result import FaithfulnessResult
from jaxattr.probing.result import ProbeResult
d = "tests/data/result_files/"
p = PatchingResult(scores=np.arange(6, dtype=np.float32).reshape(1, 2, 3), clean=np.array([1.5], np.float32),
    corrupted=np.array([0.25], np.float32), sites=("a.0", "a.1"), positions=(0, 1, 2),
    clean_tokens=(("x", "y", "z"),), corrupted_tokens=(("x", "w", "z"),),
    info={"method": "exact", "nested": {"k": [1, 2.5, None, "s"]}})
p.save(d + "patching_v1.npz")
m = MediationResult(total_effect=np.array([0.5, -0.25]), direct_effect=np.zeros((2, 1, 3), np.float32),
    indirect_effect=np.ones((2, 1, 3), np.float32), mediator="heads", info={"model": "tiny"},
    layers=("decoder.blocks.0.head_out",), response=None)
m.save(d + "mediation_v1.npz")
f = FaithfulnessResult(values={"comprehensiveness": np.array([[0.5, np.nan]])},
    bin_values={"aopc": np.arange(6.0).reshape(1, 2, 3)}, curves={"deletion": np.ones((1, 2, 5))},
    curve_x=np.linspace(0, 1, 10).reshape(1, 2, 5), step_mask=np.array([[True, False]]),
    info={"method": "saliency", "bins": [0.1, 0.5]})
f.save(d + "faithfulness_v1.npz")
r = ProbeResult(accuracy=np.array([0.5, 0.75]), accuracy_seeds=np.array([[0.5], [0.75]]),
    ci_low=np.array([0.25, np.nan]), ci_high=np.array([0.75, 1.0]), control_accuracy=None,
    selectivity=None, online_codelength=None, compression=None, control_online_codelength=None,
    control_compression=None, steps=np.array([3.0, 4.0]), layers=("l0", "l1"), kind="classification",
    probe="linear", metric="accuracy", classes=("a", "b"), control=None, n_train=4, n_val=2, n_test=2,
    seeds=1, chance=0.5, uniform_codelength=None, spec=(("lr", 0.1), ("sizes", (1, 2))))
r.save(d + "probe_v1.json")
