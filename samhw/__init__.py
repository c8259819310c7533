"""samhw: prompting and fine-tuning Segment Anything on brain-tumor MRI (the LGG dataset).

The torch-free core is :mod:`samhw.prompts` (boxes and points from a mask) and
:mod:`samhw.metrics`; around it :mod:`samhw.data`, :mod:`samhw.models`, :mod:`samhw.cache`,
:mod:`samhw.evaluate` and :mod:`samhw.study`; :mod:`samhw.plots` and :mod:`samhw.cli` are views.
"""
__version__ = "0.2.0"
