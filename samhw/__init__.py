"""samhw: prompting and fine-tuning Segment Anything on brain-tumor MRI (the LGG dataset).

The torch-free core is :mod:`samhw.prompts` (boxes and points from a mask) and
:mod:`samhw.metrics`; around it :mod:`samhw.data`, :mod:`samhw.models`, :mod:`samhw.cache`,
:mod:`samhw.predictor` (``samhw.Predictor``: one image, many prompts, like SAM's predictor),
:mod:`samhw.evaluate` and :mod:`samhw.study`; :mod:`samhw.plots` and :mod:`samhw.cli` are views.
"""
__version__ = "0.2.0"
__all__ = ["Predictor", "__version__"]


def __getattr__(name: str):
    # Imported on first use, so that ``import samhw.prompts`` does not load torch.
    if name == "Predictor":
        from .predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'samhw' has no attribute {name!r}")
