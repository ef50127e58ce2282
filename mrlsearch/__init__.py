"""mrlsearch: Matryoshka (MRL) embeddings in production.

* :class:`Searcher` - funnel retrieval: HNSW over a low-dim prefix, rerank at growing prefixes.
* :class:`Classifier` - cascade classification that spends more dims only on hard rows.
* :class:`Encoder` - onnxruntime inference of models exported by ``exporters``.

``import mrlsearch`` never imports torch.
"""

from __future__ import annotations

from ._errors import DimensionError, FormatError, MRLError, ProviderError
from ._results import FunnelPlan, Hits, SearchResult, StageStats
from .classifier import CalibrationResult, CascadeResult, CascadeStage, Classifier, CurvePoint
from .encoder import Encoder
from .searcher import Searcher

__version__ = "0.1.0"

__all__ = [
    "CalibrationResult",
    "CascadeResult",
    "CascadeStage",
    "Classifier",
    "CurvePoint",
    "DimensionError",
    "Encoder",
    "FormatError",
    "FunnelPlan",
    "Hits",
    "MRLError",
    "ProviderError",
    "Searcher",
    "SearchResult",
    "StageStats",
]

for _name in __all__:
    globals()[_name].__module__ = "mrlsearch"
del _name
