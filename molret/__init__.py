"""molret: cross-modal text <-> molecule retrieval.

This package is the shared core (featurization, tokenization, data readers, metrics, bundle
format). It never imports torch, so a serving install stays small.
"""

__version__ = "0.1.0"
