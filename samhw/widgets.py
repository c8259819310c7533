"""Interactive explorers for the notebooks (ipywidgets 8, in JupyterLab and Colab; samhw's ``notebook`` extra).

* :class:`MarginExplorer`: a max-margin slider (-20..40) with seed and slice choosers; redraws the
  box, the predicted mask and its IoU.
* :class:`WeightExplorer`: Gaussian or bilateral weights with their sigma sliders (sigma; sigma_s
  and sigma_r); redraws the weight map, the chosen point and the predicted mask.
* :class:`CompareExplorer`: a prompt chooser; the same drawn prompt decoded by several models
  (pretrained and fine-tuned), each from its own image encoder's embedding, side by side.

Each explorer keeps its controls as attributes, redraws whenever one changes, and records what
it drew (``state``, ``renders``, ``last_update_s``, ``error``), so tests set values from Python
and check what was redrawn. An update decodes from the slice's cached embedding (one decoder
pass, through :class:`samhw.Predictor`) and draws one small figure.
"""
from __future__ import annotations

import html
import io
import time
from typing import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from . import plots
from .analysis import weight_map
from .cache import cache_serves
from .metrics import iou
from .notebook import import_extra
from .predictor import Predictor
from .prompts import PromptSpec, Target

widgets = import_extra("ipywidgets")

__all__ = ["Explorer", "MarginExplorer", "WeightExplorer", "CompareExplorer", "figure_png"]


def figure_png(fig: Figure) -> bytes:
    """A figure drawn off-screen (no pyplot, so nothing else is displayed) as PNG bytes."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


class Explorer:
    """Slice and seed choosers, a picture, a status line; subclasses add controls, ``compute`` and
    ``render``. ``slices``: a :class:`samhw.data.Dataset` or a list of its slices."""

    def __init__(self, model, cache, slices, seed: int = 0, slice_index: int = 0):
        self.model, self.cache = model, cache
        self.slices = list(getattr(slices, "slices", slices))
        if not self.slices:
            raise ValueError("an explorer needs at least one slice")
        self._targets: dict[int, Target] = {}
        self._predictors: dict[int, Predictor] = {}
        self.slice = widgets.Dropdown(options=[(s.slice_id, i) for i, s in enumerate(self.slices)],
                                      value=slice_index, description="slice", layout=widgets.Layout(width="360px"))
        self.seed = widgets.BoundedIntText(value=seed, min=0, max=10**6, description="seed",
                                           layout=widgets.Layout(width="160px"))
        self.image = widgets.Image(format="png")
        self.status = widgets.HTML()
        self.timing = widgets.HTML()
        for w, name in [(self.image, "image"), (self.status, "status"), (self.timing, "timing")]:
            w.add_class(f"samhw-{name}")
        self.state: dict = {}
        self.renders = 0
        self.last_update_s: float | None = None
        self.error: Exception | None = None
        self.widget: widgets.VBox | None = None

    # -- wiring

    def _finish(self, rows: Sequence[Sequence[widgets.Widget]]) -> None:
        """Lay out ``rows`` of controls above the picture, observe every control, draw once."""
        controls = [c for row in rows for c in row]
        for control in (self.slice, self.seed, *controls):
            control.observe(self._changed, names="value")
        self.widget = widgets.VBox([widgets.HBox([self.slice, self.seed]), *(widgets.HBox(list(r)) for r in rows),
                                    self.image, self.status, self.timing])
        self.widget.add_class("samhw-explorer")
        self.update()

    def _changed(self, change) -> None:
        if change["old"] != change["new"]:
            self.update()

    @property
    def current(self):
        return self.slices[self.slice.value]

    def target(self) -> Target:
        i = self.slice.value
        if i not in self._targets:
            item = self.slices[i]
            self._targets[i] = Target(item.mask, item.image, item.slice_id)
        return self._targets[i]

    def predictor(self) -> Predictor:
        """The current slice's :class:`samhw.Predictor` (its cached embedding, prepared once)."""
        i = self.slice.value
        if i not in self._predictors:
            predictor = Predictor(self.model, self.cache)
            predictor.set_image(self.slices[i].image)
            self._predictors[i] = predictor
        return self._predictors[i]

    def _predict(self, spec: PromptSpec) -> dict:
        """Draw ``spec`` on the current slice with the current seed, decode it, score it (as the study does)."""
        item = self.current
        prompt = spec.draw(self.target(), int(self.seed.value))
        masks, scores = self.predictor().predict_prompts([prompt], spec.multimask)
        return {"slice": item.slice_id, "seed": int(self.seed.value), "spec": spec.name, "prompt": prompt,
                "mask": masks[0], "iou": iou(masks[0], item.mask), "pred_iou": float(scores[0])}

    # -- drawing

    def update(self) -> None:
        """Recompute and redraw from the controls' current values."""
        started = time.perf_counter()
        self._sync_controls()
        try:
            state = self.compute()
            self.image.value = self.render(state)
        except Exception as err:  # shown in the widget: a callback's exception is otherwise lost in a log
            self.error = err
            self.status.value = f"<b style='color:#c00'>error: {html.escape(f'{type(err).__name__}: {err}')}</b>"
            return
        self.error = None
        self.state = state
        self.renders += 1
        self.status.value = f"<span>{html.escape(self.summary())}</span>"
        self.last_update_s = time.perf_counter() - started
        self.timing.value = f"<small>redrawn in {self.last_update_s:.2f} s</small>"

    def _sync_controls(self) -> None:
        """Enable the controls that matter for the current choice (subclasses)."""

    def compute(self) -> dict:
        raise NotImplementedError

    def render(self, state: dict) -> bytes:
        raise NotImplementedError

    def summary(self) -> str:
        raise NotImplementedError

    def _repr_mimebundle_(self, **kwargs):
        data = self.widget._repr_mimebundle_(**kwargs)
        data["text/plain"] = self.summary()  # readable, and free of the widget's random model id
        return data


class MarginExplorer(Explorer):
    """E1 by hand: a box whose sides move by up to ``margin`` px (out if > 0, in if < 0)."""

    def __init__(self, model, cache, slices, margin: int = 0, seed: int = 0, slice_index: int = 0):
        super().__init__(model, cache, slices, seed, slice_index)
        self.margin = widgets.IntSlider(value=margin, min=-20, max=40, step=1, description="max margin",
                                        continuous_update=False, layout=widgets.Layout(width="520px"))
        self.margin.add_class("samhw-margin")
        self._finish([[self.margin]])

    def compute(self) -> dict:
        state = self._predict(PromptSpec.parse(f"box:{int(self.margin.value)}"))
        state["margin"] = int(self.margin.value)
        state["box"] = [int(v) for v in state["prompt"].box]
        state["tight"] = [int(v) for v in self.target().box]
        return state

    def render(self, state: dict) -> bytes:
        item = self.current
        fig = Figure(figsize=(4.2, 4.4), dpi=90)
        ax = fig.add_subplot()
        plots.draw_prediction(ax, item.image, item.mask, state["mask"], state["prompt"],
                              f"box:{state['margin']} seed {state['seed']}: IoU {state['iou']:.3f}")
        x0, y0, x1, y1 = state["tight"]
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, ec="white", lw=0.8, ls=":"))
        plots.zoom_to(ax, state["tight"], item.mask.shape, 48)
        fig.tight_layout()
        return figure_png(fig)

    def summary(self) -> str:
        s = self.state
        return (f"{s['slice']}, seed {s['seed']}, max margin {s['margin']}: box {s['box']} (tight {s['tight']}), "
                f"IoU {s['iou']:.3f} (predicted {s['pred_iou']:.3f})")


class WeightExplorer(Explorer):
    """The Gaussian and bilateral point strategies by hand: their weight map, the chosen point
    (the weighted centroid, or a pixel drawn with those weights) and the mask it prompts."""

    def __init__(self, model, cache, slices, method: str = "bilateral", point: str = "center", sigma: int = 100,
                 sigma_s: int = 100, sigma_r: int = 40, with_box: bool = False, seed: int = 0, slice_index: int = 0):
        super().__init__(model, cache, slices, seed, slice_index)
        self.method = widgets.ToggleButtons(options=["gaussian", "bilateral"], value=method, description="weights")
        self.point = widgets.ToggleButtons(options=["center", "random"], value=point, description="point")
        slider = dict(step=5, continuous_update=False, layout=widgets.Layout(width="330px"))
        self.sigma = widgets.IntSlider(value=sigma, min=5, max=200, description="sigma (px)", **slider)
        self.sigma_s = widgets.IntSlider(value=sigma_s, min=5, max=200, description="sigma_s (px)", **slider)
        self.sigma_r = widgets.IntSlider(value=sigma_r, min=5, max=150, description="sigma_r (grey)", **slider)
        self.with_box = widgets.Checkbox(value=with_box, description="add the tight box")
        for w, name in [(self.sigma, "sigma"), (self.sigma_s, "sigma-s"), (self.sigma_r, "sigma-r")]:
            w.add_class(f"samhw-{name}")
        self._finish([[self.method, self.point], [self.sigma], [self.sigma_s, self.sigma_r], [self.with_box]])

    def _sync_controls(self) -> None:
        gaussian = self.method.value == "gaussian"
        self.sigma.disabled = not gaussian
        self.sigma_s.disabled = self.sigma_r.disabled = gaussian
        self.seed.disabled = self.point.value == "center"

    def prompt_name(self) -> str:
        """The prompt the controls describe, in the study's grammar (e.g. ``center_bilateral:sigma_r=20``)."""
        if self.method.value == "gaussian":
            params = f"sigma={self.sigma.value}"
        else:
            params = f"sigma_s={self.sigma_s.value},sigma_r={self.sigma_r.value}"
        name = f"{self.point.value}_{self.method.value}:{params}"
        return f"box:0+{name}" if self.with_box.value else name

    def compute(self) -> dict:
        state = self._predict(PromptSpec.parse(self.prompt_name()))
        state["weights"] = weight_map(self.target(), self.method.value, sigma=self.sigma.value,
                                      sigma_s=self.sigma_s.value, sigma_r=self.sigma_r.value)
        state["point"] = [float(v) for v in state["prompt"].points[-1]]
        state["on_mask"] = not state["prompt"].off_target
        return state

    def render(self, state: dict) -> bytes:
        item, target = self.current, self.target()
        fig = Figure(figsize=(8.4, 4.4), dpi=90)
        left, right = fig.subplots(1, 2)
        plots.draw_weights(left, item.image, state["weights"], point=state["point"], center=target.center,
                           title=f"{self.method.value} weights (share of the draw)")
        plots.draw_prediction(right, item.image, item.mask, state["mask"], state["prompt"],
                              f"{state['spec']}\nIoU {state['iou']:.3f}")
        plots.zoom_to(right, target.box, item.mask.shape, 30)
        fig.tight_layout()
        return figure_png(fig)

    def summary(self) -> str:
        s = self.state
        x, y = s["point"]
        where = "on the mask" if s["on_mask"] else "OFF the mask"
        return (f"{s['slice']}, {s['spec']} (seed {s['seed']}): point ({x:.1f}, {y:.1f}) {where}, "
                f"IoU {s['iou']:.3f} (predicted {s['pred_iou']:.3f})")


class CompareExplorer(Explorer):
    """Several models on the same prompt: ``models`` maps a label to ``(model, embedding cache)``, as
    :func:`samhw.notebook.live_models` returns them (each cache holds its model's image encoder's
    embeddings, so a model that trained part of its encoder is shown with its own); ``prompts`` are
    the study's names offered in the dropdown."""

    def __init__(self, models: Mapping[str, tuple], slices, prompts: Sequence[str], prompt: str | None = None,
                 seed: int = 0, slice_index: int = 0):
        for label, pair in models.items():
            if not (isinstance(pair, tuple) and len(pair) == 2 and pair[1] is not None):
                raise TypeError(f"models[{label!r}] must be a (model, embedding cache) pair, got {pair!r:.60}")
            model, cache = pair
            if not cache_serves(cache, model):
                raise ValueError(f"the cache of {label!r} holds another image encoder's embeddings: "
                                 "make it with EmbeddingCache(model)")
        first, cache = next(iter(models.values()))
        super().__init__(first, cache, slices, seed, slice_index)
        self.models = dict(models)
        self.prompt = widgets.Dropdown(options=list(prompts), value=prompt or prompts[0], description="prompt",
                                       layout=widgets.Layout(width="360px"))
        self.prompt.add_class("samhw-prompt")
        self._finish([[self.prompt]])

    def compute(self) -> dict:
        """One prompt drawn on the current slice, decoded by each model from its cached embedding."""
        item, spec = self.current, PromptSpec.parse(self.prompt.value)
        prompt = spec.draw(self.target(), int(self.seed.value))
        results = {}
        for label, (model, cache) in self.models.items():
            predictor = Predictor(model)
            predictor.set_embedding(cache.get(item.image), item.mask.shape)
            masks, scores = predictor.predict_prompts([prompt], spec.multimask)
            results[label] = {"mask": masks[0], "iou": iou(masks[0], item.mask), "pred_iou": float(scores[0])}
        return {"spec": spec.name, "seed": int(self.seed.value), "slice": item.slice_id, "prompt": prompt,
                "models": results}

    def render(self, state: dict) -> bytes:
        item, target = self.current, self.target()
        fig = Figure(figsize=(4.2 * len(state["models"]), 4.4), dpi=90)
        axes = fig.subplots(1, len(state["models"]), squeeze=False)[0]
        for ax, (label, result) in zip(axes, state["models"].items()):
            plots.draw_prediction(ax, item.image, item.mask, result["mask"], state["prompt"],
                                  f"{label}\n{state['spec']}: IoU {result['iou']:.3f}")
            plots.zoom_to(ax, target.box, item.mask.shape, 40)
        fig.tight_layout()
        return figure_png(fig)

    def summary(self) -> str:
        s = self.state
        scores = ", ".join(f"{label} IoU {r['iou']:.3f} (predicted {r['pred_iou']:.3f})" for label, r in s["models"].items())
        return f"{s['slice']}, {s['spec']} (seed {s['seed']}): {scores}"
