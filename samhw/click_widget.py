"""Click to segment: a notebook widget (JupyterLab and Colab) over :class:`samhw.interactive.Session`.

On the picture: a left click adds a positive point; a click with Shift (or Alt), or any click while
the "negative" toggle is on, adds a negative point; a drag draws a box (one box: a new drag replaces
it). Buttons: undo, reset, "suggest next click" (rings the pixel SAM's E5 protocol would click
next, from the truth, where one is given). A dropdown switches between models (the prompts are
decoded again with the other). After each action the mask is decoded once (the image's decoder
context is made once per model) and the picture redrawn with SAM's predicted IoU and, with a
truth, the IoU against it.

Why anywidget: the picture must report where it was clicked and dragged, which ipywidgets' Image
does not. anywidget carries the few lines of browser code inside this module (no extension to
build, nothing fetched from a CDN, so it works offline) and runs in JupyterLab, Notebook 7 and Colab;
ipyevents would do the clicks but adds a second front-end extension for the same job, ipycanvas
draws through a canvas protocol we do not need, and ipympl routes every redraw through matplotlib
(slower than sending one PNG).

:class:`ClickSegmenter` keeps the logic (``click``, ``drag``, ``undo``, ``reset``, ``suggest``,
``state``) callable from Python, which is what the unit tests drive; the browser test clicks the
real picture.
"""
from __future__ import annotations

import base64
import html
import io
import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .interactive import Decoded, Session
from .metrics import iou
from .models import single_thread
from .notebook import import_extra
from .prompts import Prompt
from .refine import Click, next_click

anywidget = import_extra("anywidget")
widgets = import_extra("ipywidgets")
traitlets = import_extra("traitlets")

__all__ = ["ClickCanvas", "ClickSegmenter", "render_png"]

_ESM = """
function position(event, img) {
  const r = img.getBoundingClientRect();
  return { x: (event.clientX - r.left) * img.naturalWidth / r.width,
           y: (event.clientY - r.top) * img.naturalHeight / r.height };
}
function render({ model, el }) {
  const img = document.createElement("img");
  img.className = "samhw-click-image";
  img.draggable = false;
  img.style.cursor = "crosshair";
  const show = () => { img.src = "data:image/png;base64," + model.get("png"); };
  model.on("change:png", show);
  show();
  let down = null;
  img.addEventListener("mousedown", (e) => { e.preventDefault(); down = position(e, img); });
  img.addEventListener("mouseup", (e) => {
    if (down === null) return;
    const up = position(e, img);
    const negative = e.shiftKey || e.altKey;
    if (Math.hypot(up.x - down.x, up.y - down.y) > model.get("drag_px")) {
      model.send({ kind: "drag", x0: down.x, y0: down.y, x1: up.x, y1: up.y });
    } else {
      model.send({ kind: "click", x: up.x, y: up.y, negative: negative });
    }
    down = null;
  });
  el.appendChild(img);
}
export default { render };
"""


class ClickCanvas(anywidget.AnyWidget):
    """A PNG that reports clicks and drags in its own pixel coordinates (messages ``click``: x, y,
    negative; ``drag``: x0, y0, x1, y1)."""

    _esm = traitlets.Unicode(_ESM).tag(sync=True)
    png = traitlets.Unicode("").tag(sync=True)  # base64
    drag_px = traitlets.Float(6.0).tag(sync=True)  # a move longer than this is a drag


def render_png(image: np.ndarray, mask: np.ndarray | None, prompt: Prompt | None, truth: np.ndarray | None = None,
               suggestion: Click | None = None, zoom: int = 2) -> bytes:
    """The slice enlarged ``zoom`` times (pixel (x, y) covers display pixels [zoom*x, zoom*x + zoom)),
    the mask tinted blue, the truth's outline yellow, positive points green, negative red, the box
    green, a suggested click ringed white. PNG bytes."""
    from PIL import Image, ImageDraw

    out = image.astype(np.float64)
    if mask is not None:
        out[mask] = 0.55 * out[mask] + 0.45 * np.array([0, 116, 217])
    if truth is not None:
        edge = truth & ~ndimage.binary_erosion(truth)
        out[edge] = (255, 220, 0)
    big = np.repeat(np.repeat(out.round().astype(np.uint8), zoom, axis=0), zoom, axis=1)
    picture = Image.fromarray(big)
    draw = ImageDraw.Draw(picture)
    centre = lambda v: (v + 0.5) * zoom  # noqa: E731 (pixel index -> display coordinate of its centre)
    if prompt is not None:
        if prompt.box is not None:
            x0, y0, x1, y1 = prompt.box
            draw.rectangle([x0 * zoom, y0 * zoom, (x1 + 1) * zoom - 1, (y1 + 1) * zoom - 1], outline=(46, 204, 64),
                           width=2)
        r = 2 + zoom
        for (x, y), label in zip(prompt.points, prompt.labels):
            cx, cy = centre(x), centre(y)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(46, 204, 64) if label else (255, 65, 54),
                         outline=(0, 0, 0))
    if suggestion is not None:
        cx, cy, r = centre(suggestion.x), centre(suggestion.y), 4 + 2 * zoom
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=(255, 255, 255), width=2)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class _Step:
    """The prompt after an action and what it decoded to."""

    points: list = field(default_factory=list)  # [(x, y, label)]
    box: tuple | None = None
    decoded: Decoded | None = None


class ClickSegmenter:
    """Click to segment one slice. ``models``: name -> (model, embedding) or name -> model (the
    embedding is then computed); ``image`` (H, W, 3) uint8; ``truth`` (H, W) bool or None.

    ``mask_input``: decode each action with the previous output's logits as SAM's mask input (the
    E5 variant); off by default, since the pretrained LiteMedSAM follows clicks better without it.
    """

    def __init__(self, models: dict, image: np.ndarray, truth: np.ndarray | None = None, zoom: int = 2,
                 mask_input: bool = False):
        if not models:
            raise ValueError("give at least one model")
        self.image = np.asarray(image)
        self.truth = None if truth is None else np.asarray(truth, dtype=bool)
        self.shape = self.image.shape[:2]
        self.zoom = zoom
        self._models = {name: (v if isinstance(v, tuple) else (v, None)) for name, v in models.items()}
        self._sessions: dict[str, Session] = {}
        self.steps: list[_Step] = [_Step()]
        self.suggestion: Click | None = None
        self.last_update_s: float | None = None
        self.canvas = ClickCanvas()
        self.canvas.add_class("samhw-click")
        self.canvas.on_msg(self._message)
        self.model = widgets.Dropdown(options=list(self._models), description="model",
                                      layout=widgets.Layout(width="260px"))
        self.negative = widgets.ToggleButton(value=False, description="negative clicks", icon="minus")
        self.feed = widgets.Checkbox(value=mask_input, description="previous mask as mask_input", indent=False)
        buttons = {name: widgets.Button(description=name) for name in ("undo", "reset", "suggest next click")}
        buttons["undo"].on_click(lambda _: self.undo())
        buttons["reset"].on_click(lambda _: self.reset())
        buttons["suggest next click"].on_click(lambda _: self.suggest())
        buttons["suggest next click"].disabled = self.truth is None
        self.model.observe(lambda _: self._redecode(), names="value")
        self.feed.observe(lambda _: self._redecode(), names="value")
        self.status = widgets.HTML()
        self.status.add_class("samhw-click-status")
        self.widget = widgets.VBox([widgets.HBox([self.model, self.negative, self.feed]),
                                    widgets.HBox(list(buttons.values())), self.canvas, self.status])
        self._draw()

    # -- actions (also what the browser's clicks call)

    def click(self, x: float, y: float, negative: bool = False) -> None:
        """Add a point at slice pixel (x, y) (column, row); negative with ``negative`` or the toggle."""
        x, y = int(x), int(y)
        if not (0 <= x < self.shape[1] and 0 <= y < self.shape[0]):
            return
        label = 0 if (negative or self.negative.value) else 1
        last = self.steps[-1]
        self._push(_Step(last.points + [(x, y, label)], last.box))

    def drag(self, x0: float, y0: float, x1: float, y1: float) -> None:
        """Set the box spanned by two slice pixels (any two corners; clipped to the image)."""
        h, w = self.shape
        xs = sorted(min(max(int(v), 0), w - 1) for v in (x0, x1))
        ys = sorted(min(max(int(v), 0), h - 1) for v in (y0, y1))
        self._push(_Step(list(self.steps[-1].points), (xs[0], ys[0], xs[1], ys[1])))

    def undo(self) -> None:
        if len(self.steps) > 1:
            self.steps.pop()
        self.suggestion = None
        self._draw()

    def reset(self) -> None:
        self.steps = [_Step()]
        self.suggestion = None
        self._draw()

    def suggest(self) -> Click | None:
        """Where E5's protocol would click next (``samhw.refine.next_click``); None without a truth."""
        if self.truth is None:
            return None
        mask = self.mask if self.mask is not None else np.zeros(self.shape, bool)
        self.suggestion = next_click(self.truth, mask)
        self._draw()
        return self.suggestion

    # -- state

    @property
    def prompt(self) -> Prompt | None:
        step = self.steps[-1]
        if not step.points and step.box is None:
            return None
        points = np.array([(x, y) for x, y, _ in step.points], dtype=np.float64).reshape(-1, 2)
        labels = np.array([label for _, _, label in step.points], dtype=np.int64)
        return Prompt(points, labels, None if step.box is None else np.array(step.box, dtype=np.float64))

    @property
    def mask(self) -> np.ndarray | None:
        decoded = self.steps[-1].decoded
        return None if decoded is None else decoded.mask

    def state(self) -> dict:
        """What is shown: the prompt's points ((x, y, label)), the box, the mask's area, SAM's
        predicted IoU, the IoU against the truth, the suggestion and the model."""
        step = self.steps[-1]
        decoded = step.decoded
        return {"model": self.model.value, "points": list(step.points), "box": step.box,
                "area": None if decoded is None else int(decoded.mask.sum()),
                "pred_iou": None if decoded is None else decoded.score,
                "iou": None if decoded is None or self.truth is None else iou(decoded.mask, self.truth),
                "suggestion": self.suggestion}

    # -- internals

    def session(self) -> Session:
        name = self.model.value
        if name not in self._sessions:
            model, embedding = self._models[name]
            if embedding is None:
                embedding = model.encode(self.image[None])
            self._sessions[name] = Session(model, embedding, self.shape)
        return self._sessions[name]

    def _decode(self, step: _Step, previous: Decoded | None) -> Decoded:
        prompt = Prompt(np.array([(x, y) for x, y, _ in step.points], dtype=np.float64).reshape(-1, 2),
                        np.array([label for _, _, label in step.points], dtype=np.int64),
                        None if step.box is None else np.array(step.box, dtype=np.float64))
        lone_point = step.box is None and len(step.points) == 1
        session = self.session()
        with single_thread(session.model.device):
            feed = previous.low_res if (self.feed.value and previous is not None) else None
            return session.decode(prompt, feed, multimask=lone_point)

    def _push(self, step: _Step) -> None:
        started = time.perf_counter()
        step.decoded = self._decode(step, self.steps[-1].decoded)
        self.steps.append(step)
        self.suggestion = None
        self._draw(started)

    def _redecode(self) -> None:
        """Decode every step again (another model, or the mask_input choice changed)."""
        started = time.perf_counter()
        previous = None
        for step in self.steps[1:]:
            step.decoded = previous = self._decode(step, previous)
        self._draw(started)

    def _message(self, _, content: dict, buffers) -> None:
        z = self.zoom
        if content.get("kind") == "click":
            self.click(content["x"] // z, content["y"] // z, bool(content.get("negative")))
        elif content.get("kind") == "drag":
            self.drag(content["x0"] // z, content["y0"] // z, content["x1"] // z, content["y1"] // z)

    def _draw(self, started: float | None = None) -> None:
        self.canvas.png = base64.b64encode(render_png(self.image, self.mask, self.prompt, self.truth,
                                                      self.suggestion, self.zoom)).decode()
        s = self.state()
        parts = [f"model {s['model']}", f"{len(s['points'])} points" + (", a box" if s["box"] else "")]
        if s["area"] is not None:
            parts.append(f"mask {s['area']} px, predicted IoU {s['pred_iou']:.3f}")
            if s["iou"] is not None:
                parts.append(f"IoU vs truth {s['iou']:.3f}")
        if self.suggestion is not None:
            sg = self.suggestion
            parts.append(f"suggested: {'positive' if sg.label else 'negative'} click at ({sg.x}, {sg.y})")
        if started is not None:
            self.last_update_s = time.perf_counter() - started
            parts.append(f"redrawn in {self.last_update_s:.2f} s")
        self.status.value = html.escape("; ".join(parts))

    def _repr_mimebundle_(self, **kwargs):
        data = self.widget._repr_mimebundle_(**kwargs)
        data["text/plain"] = self.status.value
        return data
