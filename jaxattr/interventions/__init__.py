"""Causal interventions: activation patching, causal tracing and causal mediation.

Built on the internals layer (one naming of sites; capture / patch / delta in one traced
forward): every grid of interventions is one compiled program vmapped over its cells.
"""
from .categories import CATEGORIES, category_average, position_categories
from .mediation import MEDIATORS, causal_mediation, mediate_interventions
from .patching import activation_patching
from .results import MediationResult, PatchingResult, TraceAverage, TraceResult, load_result
from .tracing import attribution_trace, average_traces, causal_trace, subject_token_range

__all__ = ["activation_patching", "causal_mediation", "mediate_interventions", "MEDIATORS", "causal_trace",
           "attribution_trace", "average_traces", "subject_token_range",
           "position_categories", "category_average", "CATEGORIES", "PatchingResult",
           "TraceResult", "TraceAverage", "MediationResult", "load_result"]
