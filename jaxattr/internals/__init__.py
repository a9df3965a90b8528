"""The model-aware layer: one naming of sites and the interface every backend implements.

:mod:`~jaxattr.internals.sites` names activations the same way for every architecture;
:mod:`~jaxattr.internals.protocol` is the forward contract (capture / patch / delta at many
sites in one traced forward) that the transformers-Flax adapter and the native models give.
"""
from .cache import ActivationCache, run_sites
from .protocol import ModelFunctions
from .sites import (BLOCK_KINDS, CAPTURE_ONLY, Site, SiteError, is_raw_path, parse_site,
                    resolve_sites, site_names, summarize)

__all__ = ["ActivationCache", "run_sites", "ModelFunctions", "BLOCK_KINDS", "CAPTURE_ONLY", "Site", "SiteError", "is_raw_path",
           "parse_site", "resolve_sites", "site_names", "summarize"]
