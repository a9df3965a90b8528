"""Diagnostic classifiers: can a property be read out of each layer's representation?

Probes of every layer, seed, the task and its control task (Hewitt & Liang, 2019) and the
blocks of the online code (Voita & Titov, 2020) train in one jitted, vmapped program::

    res = jaxattr.probing.fit(features, labels, control="type", types=words, mdl=True)
    print(res.table()); res.figure(); res.save("probe.json")

``features`` is ``[N, n_layers, H]`` or ``{site: [N, H]}``; collect them from a model with
:func:`collect_features`.
"""
from .features import POOLINGS, Features, collect_features
from .fit import fit
from .result import ProbeResult, load
from .spec import MDL_FRACTIONS, TrainSpec

__all__ = ["fit", "collect_features", "Features", "POOLINGS", "ProbeResult", "load", "TrainSpec", "MDL_FRACTIONS"]
