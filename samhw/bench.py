"""``python -m samhw bench``: the plain eager path against the project's path, on the same slices.

Measured in one run: encoder time per slice, decoder time per prompt (one at a time and batched),
the study's wall time on a subset of slices from a cold and a warm cache,
a decoder-only training step (:func:`samhw.train.train_step`), peak memory, and the embedding cache's
size on disk. Each path runs
in a fresh process of its own (the plain path as PyTorch is installed, the project's path with its
process-wide allocator setting). Results are printed with their ratios and written as JSON and
Markdown with the machine's description.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import platform
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .cache import EmbeddingCache
from .data import Dataset, load_dataset
from .evaluate import evaluate, plan
from .fileio import atomic_write_text, storage_errors
from .models import SamModel, load_model, model_names, resolve_device
from .prompts import Prompt, PromptSpec, Target, parse_prompts
from .resources import PeakMemory, keep_freed_memory
from .study import EXPERIMENTS
from .train import FinetuneConfig, adamw, train_step, trainable_parameters, training_prompt

__all__ = ["BenchConfig", "BenchError", "SPLITS", "run_bench", "measure_latency", "measure_paths", "measure_arithmetic",
           "compare_paths", "summarize", "write_bench", "format_bench", "describe_machine", "encoder_ms", "decoder_ms",
           "train_step_ms", "spread"]

#: Dataset splits a benchmark can run on.
SPLITS = ("train", "val", "test", "all")
#: Every prompt of the study's experiments (the equivalence check and the study subset's prompt count).
STUDY_PROMPTS = [p for e in EXPERIMENTS.values() for p in e]


class BenchError(ValueError):
    """Options a benchmark cannot run with (an unknown split, no slices, ...)."""


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark measures: the model and its weights, the device, the slices, the repetitions.

    ``slices``: the first slices of ``split`` (the study subset, the latency and training-step
    batches); ``seeds``: seeds of the study subset's random prompts; ``repeat``: timed rounds or calls
    per measure (medians reported).
    """

    data: str | None = None
    split: str = "test"
    slices: int = 8
    seeds: int = 3
    device: str = "auto"
    model: str = "litemedsam"
    checkpoint: str | None = None
    repeat: int = 5

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise BenchError(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        for name in ("slices", "seeds", "repeat"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BenchError(f"{name} must be a whole number of at least 1, got {value!r}")
        if self.model not in model_names():
            raise BenchError(f"unknown model {self.model!r}; known: {', '.join(model_names())}")
        object.__setattr__(self, "device", str(resolve_device(self.device)))  # an unusable device fails here

    @property
    def decoder_calls(self) -> int:
        """One-prompt decoder calls per latency round."""
        return 8 * self.repeat


def describe_machine(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return info


def _seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call, the device's queued work included."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _samples(fn: Callable[[], object], device: torch.device, repeat: int) -> list[float]:
    """Seconds of each of ``repeat`` calls, after one warm-up call."""
    fn()
    return [_seconds(fn, device) for _ in range(repeat)]


def _timed(fn: Callable[[], object], device: torch.device, repeat: int) -> float:
    """Median seconds of ``repeat`` calls after one warm-up call."""
    return float(np.median(_samples(fn, device, repeat)))


def encoder_ms(model: SamModel, images: Sequence[np.ndarray], batch: int, repeat: int) -> float:
    """Median milliseconds per slice of encoding ``batch`` of ``images`` (H, W, 3) together."""
    chunk = list(images[:batch])
    return 1000 * _timed(lambda: model.encode(chunk), model.device, repeat) / len(chunk)


def decoder_ms(model: SamModel, embedding: torch.Tensor, prompts: Sequence[Prompt], shape: tuple[int, int],
               batch: int, repeat: int) -> float:
    """Median milliseconds per prompt of decoding ``batch`` prompts (``prompts`` repeated) of one
    image together, from its embedding (1, C, h, w), on the slice of ``shape`` (H, W)."""
    context = model.image_context(embedding)
    chunk = (list(prompts) * batch)[:batch]
    return 1000 * _timed(lambda: model.predict_masks(context, chunk, shape, False), model.device, repeat) / batch


#: One path's state in its latency process (see :func:`measure_latency`).
_LATENCY: dict = {}


def _latency_setup(plain: bool, config: BenchConfig, cache_root: str) -> None:
    model = load_model(config.model, config.checkpoint, config.device, plain=plain, cache_dir=cache_root)
    dataset = load_dataset(config.data, config.split, limit=config.slices)
    item = dataset.slices[0]
    target = Target(item.mask, item.image, item.slice_id)
    _LATENCY.update(model=model, images=[s.image for s in dataset.slices], shape=item.mask.shape,
                    context=model.image_context(model.encode([item.image])),
                    prompt=parse_prompts(["box:0"])[0].draw(target, 0))


def _latency_round(decoder_calls: int) -> tuple[list[float], list[float]]:
    """Milliseconds of each encoder call (one slice each, every slice once) and of each one-prompt
    decoder call, after a warm-up call of each."""
    state = _LATENCY
    model, images = state["model"], state["images"]
    model.encode(images[:1])
    encoder = [1000 * _seconds(lambda: model.encode([image]), model.device) for image in images]
    decode = lambda: model.predict_masks(state["context"], [state["prompt"]], state["shape"], False)  # noqa: E731
    return encoder, [1000 * t for t in _samples(decode, model.device, decoder_calls)]


def measure_latency(config: BenchConfig, cache_root: str | os.PathLike) -> dict:
    """Encoder latency (one slice) and decoder latency (one prompt) of both paths, in ``config.repeat``
    alternating rounds between two processes that live side by side, so that a change in the machine's
    speed (a shared machine's neighbours) reaches both paths alike. Per path (``plain``, ``fast``):
    every call's milliseconds, ``{"encoder": [...], "decoder": [...]}``."""
    context = multiprocessing.get_context("spawn")
    pools = {name: ProcessPoolExecutor(1, mp_context=context, initializer=_latency_setup,
                                       initargs=(name == "plain", config, str(cache_root)))
             for name in ("plain", "fast")}
    out = {name: {"encoder": [], "decoder": []} for name in pools}
    try:
        for _ in range(config.repeat):
            for name, pool in pools.items():
                encoder, decoder = pool.submit(_latency_round, config.decoder_calls).result()
                out[name]["encoder"] += encoder
                out[name]["decoder"] += decoder
    finally:
        for pool in pools.values():
            pool.shutdown()
    return out


def spread(samples: Sequence[float]) -> dict:
    """Median and quartiles of some milliseconds: ``{"ms", "q25_ms", "q75_ms", "calls"}``."""
    q25, q50, q75 = np.percentile(samples, [25, 50, 75])
    return {"ms": round(float(q50), 2), "q25_ms": round(float(q25), 2), "q75_ms": round(float(q75), 2),
            "calls": len(samples)}


def train_step_ms(model: SamModel, embeddings: torch.Tensor, prompts: Sequence[tuple[PromptSpec, Prompt]],
                  truths: Sequence[torch.Tensor], repeat: int, plain: bool = False) -> float:
    """Median milliseconds of one decoder-only :func:`samhw.train.train_step` on a batch of embeddings
    (B, C, h, w) with its (spec, prompt) pairs and masks (H, W), with samhw's optimizer
    (:func:`samhw.train.adamw`) or, ``plain``, torch's default AdamW; the weights and which of them
    take gradients are restored afterwards."""
    wanted = {name: p.requires_grad for name, p in model.named_parameters()}
    params = trainable_parameters(model, ("decoder",))
    saved = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=1e-6) if plain else adamw(params, model.device, 1e-6, 0.01)
    model.mask_decoder.train()
    try:
        return 1000 * _timed(lambda: train_step(model, optimizer, embeddings, prompts, truths), model.device, repeat)
    finally:
        model.mask_decoder.eval()
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
        for name, p in model.named_parameters():
            p.requires_grad_(wanted[name])


def _gflop(fn: Callable[[], object]) -> tuple[object, float]:
    """What one call returns, and its matrix-product and convolution work, GFLOP (torch's flop counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        result = fn()
    return result, counter.get_total_flops() / 1e9


def _matmul_gflops(device: torch.device, size: int = 2048, repeat: int = 5) -> float:
    """This machine's fp32 matrix-product rate, GFLOP/s: the ceiling of compute-bound work."""
    a = torch.randn(size, size, device=device)
    return 2 * size ** 3 / _timed(lambda: a @ a, device, repeat) / 1e9


def measure_arithmetic(plain: SamModel, fast: SamModel, fast_cache: EmbeddingCache, dataset: Dataset) -> dict:
    """GFLOP per slice (encoder) and per prompt (decoder, one box) of each path, and the machine's rate."""
    item = dataset.slices[0]
    prompt = parse_prompts(["box:10"])[0].draw(Target(item.mask, None, item.slice_id), 0)
    embedding, encoder_gflop = _gflop(lambda: plain.encode([item.image]))
    plain_context, fast_context = plain.image_context(embedding), fast.image_context(fast_cache.get(item.image))
    _, plain_gflop = _gflop(lambda: plain.predict_masks(plain_context, [prompt], item.mask.shape, False))
    _, fast_gflop = _gflop(lambda: fast.predict_masks(fast_context, [prompt], item.mask.shape, False))
    return {"encoder_gflop": round(encoder_gflop, 2), "plain_decoder_gflop": round(plain_gflop, 3),
            "fast_decoder_gflop": round(fast_gflop, 3), "matmul_gflops": round(_matmul_gflops(plain.device), 1)}


def _study_subset(model: SamModel, dataset: Dataset, seeds: int, cache_root: Path) -> dict:
    """The study's prompts on ``dataset``, from a cold cache and again from the warm one: seconds,
    peak memory, and the steady throughput (between the first and last slice, so without the
    workers' start-up)."""
    specs = parse_prompts([p for e in ("E1", "E2", "E3") for p in EXPERIMENTS[e]])
    cache = EmbeddingCache(model, cache_root)
    out: dict = {}
    for run in ("cold", "warm"):
        with PeakMemory(model.device, interval_s=0.25) as memory:
            start = time.perf_counter()
            rows, stamps = [], []
            for slice_rows in evaluate(model, cache, dataset, specs, list(range(seeds)), progress=False):
                rows += slice_rows
                stamps.append(time.perf_counter())
            seconds = time.perf_counter() - start
        per_slice = len(rows) / len(dataset)
        out[run] = {"seconds": round(seconds, 2), "ms_per_prompt": round(1000 * seconds / len(rows), 1),
                    "steady_ms_per_prompt": round(1000 * (stamps[-1] - stamps[0]) / ((len(stamps) - 1) * per_slice), 1)
                    if len(stamps) > 1 else None,
                    "peak_mb": None if memory.peak_mb is None else round(memory.peak_mb)}
    files = list(cache.folder.glob("*/*.npy"))
    return {**out["cold"], "warm": out["warm"], "prompts": len(rows), "mean_iou": float(np.mean([r["iou"] for r in rows])),
            "cache_bytes_per_slice": int(np.mean([f.stat().st_size for f in files])) if files else None}


def compare_paths(plain: SamModel, fast: SamModel, dataset: Dataset, prompts: list[str], cache_root: Path,
                  seed: int = 0) -> dict:
    """Masks of the plain path (fresh fp32 eager embeddings) against the fast path (its own encoder
    through a float16 cache): the share of agreeing pixels and both mean IoUs, over every prompt."""
    from .metrics import iou

    cache = EmbeddingCache(fast, cache_root)
    specs = parse_prompts(prompts)
    agree = total = 0
    ious_plain, ious_fast = [], []
    for item in dataset.slices:
        target = Target(item.mask, item.image, item.slice_id)
        plain_context = plain.image_context(plain.encode([item.image]))
        fast_context = fast.image_context(cache.get(item.image))
        for spec in specs:
            prompt = spec.draw(target, seed)
            a = plain.predict(plain_context, [prompt], item.mask.shape, spec.multimask)[0][0]
            b = fast.predict(fast_context, [prompt], item.mask.shape, spec.multimask)[0][0]
            agree += int((a == b).sum())
            total += a.size
            ious_plain.append(iou(a, item.mask))
            ious_fast.append(iou(b, item.mask))
    return {"pixel_agreement": agree / total, "iou_plain": float(np.mean(ious_plain)),
            "iou_fast": float(np.mean(ious_fast)), "prompts": len(ious_plain)}


#: Slices in the benchmark's training step (the fine-tuning default).
TRAIN_BATCH = 8


def _measure_path(plain: bool, config: BenchConfig, cache_root: str) -> dict:
    """The batched timings, the training step and the study subset of one path (``plain``: eager
    PyTorch as installed), in a process of its own so that no process-wide setting of one path
    reaches the other. The plain path is then timed once more with samhw's allocator setting
    (:func:`samhw.resources.keep_freed_memory`), to show its share."""
    model = load_model(config.model, config.checkpoint, config.device, plain=plain)
    dev = model.device
    repeat = config.repeat
    dataset = load_dataset(config.data, config.split, limit=config.slices)
    images = [s.image for s in dataset.slices]
    shape = dataset.slices[0].mask.shape
    batch_enc = 32 if dev.type == "cuda" else 1
    batch_dec = 64 if dev.type == "cuda" else 16
    out: dict = {"encoder_backend": model.encoder_backend}
    if not plain and len(images) >= batch_enc > 1:
        out.update(encoder_batched_ms=encoder_ms(model, images, batch_enc, max(1, repeat // 2)), encoder_batch=batch_enc)

    embedding = model.encode(images[:1])
    target = Target(dataset.slices[0].mask, images[0], dataset.slices[0].slice_id)
    prompts = [spec.draw(target, 0) for spec in parse_prompts(["box:0", "box:10"])]
    out.update(decoder_batched_ms=decoder_ms(model, embedding, prompts, shape, batch_dec, max(1, repeat // 2)),
               decoder_batch=batch_dec)

    chosen = (dataset.slices * TRAIN_BATCH)[:TRAIN_BATCH]
    drawn = [training_prompt(FinetuneConfig(model=config.model), s, 0) for s in chosen]  # the default mix
    truths = [torch.from_numpy(s.mask).to(dev) for s in chosen]
    out["train_step_ms"] = train_step_ms(model, model.encode([s.image for s in chosen]).to(dev), drawn, truths,
                                         max(1, repeat // 2), plain=plain)
    out["train_step_prompts"] = [spec.name for spec, _ in drawn]

    model.onnx_dir = Path(cache_root) / "onnx"  # a cold cache includes the ONNX export
    out["study"] = _study_subset(model, dataset, config.seeds, Path(cache_root) / ("plain" if plain else "fast"))
    if plain and dev.type == "cpu" and keep_freed_memory():
        out["allocator_kept"] = {"encoder_ms": encoder_ms(model, images, 1, repeat),
                                 "decoder_ms": decoder_ms(model, embedding, prompts, shape, 1, 10 * repeat)}
    return out


def measure_paths(config: BenchConfig, cache_root: str | os.PathLike) -> dict[str, dict]:
    """Batched encoder and decoder times, the training step and the study subset of each path
    (``plain``, ``fast``), each in a fresh process of its own, one after the other."""
    paths = {}
    for name in ("plain", "fast"):
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            paths[name] = pool.submit(_measure_path, name == "plain", config, str(cache_root)).result()
    return paths


def run_bench(config: BenchConfig, out: str | os.PathLike | None = None, study_record: dict | None = None) -> dict:
    """Measure both paths (:func:`measure_latency`, :func:`measure_paths`, :func:`compare_paths`,
    :func:`measure_arithmetic`), print the table and write ``out``.json/.md if given; returns the results.

    ``study_record``: the ``summary.json`` of a default study run, whose time is set against the
    study's target (it is not rerun here).
    """
    dataset = load_dataset(config.data, config.split, limit=config.slices)
    machine = describe_machine(torch.device(config.device))
    print(f"benchmarking on {config.device} ({machine.get('gpu', machine['cpu'])}), "
          f"{len(dataset)} {config.split} slices, {config.seeds} seeds; each path in a process of its own", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        latency = measure_latency(config, Path(tmp) / "latency")
        paths = measure_paths(config, tmp)
        fast = load_model(config.model, config.checkpoint, config.device)
        plain = load_model(config.model, config.checkpoint, config.device, plain=True)
        fast.onnx_dir = Path(tmp) / "onnx"
        equivalence = compare_paths(plain, fast, dataset, STUDY_PROMPTS, Path(tmp) / "fast")
        arithmetic = measure_arithmetic(plain, fast, EmbeddingCache(fast, Path(tmp) / "fast"), dataset)
    result = summarize(config, len(dataset), latency, paths, equivalence, arithmetic, study_record)
    print(format_bench(result))
    if out is not None:
        for path in write_bench(result, out):
            print(f"wrote {path}")
    return result


def summarize(config: BenchConfig, slices: int, latency: dict, paths: dict[str, dict], equivalence: dict,
              arithmetic: dict, study_record: dict | None = None) -> dict:
    """The benchmark's record (what :func:`format_bench` writes) from the phases' results."""
    plain, fast = paths["plain"], paths["fast"]
    result: dict = {"machine": describe_machine(torch.device(config.device)), "device": config.device,
                    "model": config.model, "split": config.split, "slices": slices, "seeds": config.seeds,
                    "encoder_backend": fast["encoder_backend"], "equivalence": equivalence, "arithmetic": arithmetic}
    spreads = {name: {part: spread(times) for part, times in parts.items()} for name, parts in latency.items()}
    result["latency_rounds"] = config.repeat
    enc = {"plain_ms": spreads["plain"]["encoder"]["ms"], "fast_ms": spreads["fast"]["encoder"]["ms"],
           "plain": spreads["plain"]["encoder"], "fast": spreads["fast"]["encoder"]}
    if "encoder_batched_ms" in fast:
        enc.update(fast_batched_ms=fast["encoder_batched_ms"], batch=fast["encoder_batch"])
    result["encoder_per_slice"] = enc
    result["decoder_per_prompt"] = {"plain_ms": spreads["plain"]["decoder"]["ms"], "fast_ms": spreads["fast"]["decoder"]["ms"],
                                    "plain": spreads["plain"]["decoder"], "fast": spreads["fast"]["decoder"],
                                    "plain_batched_ms": plain["decoder_batched_ms"],
                                    "fast_batched_ms": fast["decoder_batched_ms"], "batch": fast["decoder_batch"]}
    result["train_step_batch8"] = {"plain_ms": plain["train_step_ms"], "fast_ms": fast["train_step_ms"],
                                   "prompts": fast["train_step_prompts"]}
    if "allocator_kept" in plain:
        result["plain_allocator_kept"] = plain["allocator_kept"]
    subset = result["study_subset"] = {"fast": fast["study"], "plain": plain["study"]}
    subset["prompts_per_slice"] = len(plan(parse_prompts(STUDY_PROMPTS), list(range(config.seeds))))
    bytes_per_slice = subset["fast"]["cache_bytes_per_slice"]
    result["cache"] = {"bytes_per_slice": bytes_per_slice, "shared_copy_gb": round(bytes_per_slice * 1092 / 1e9, 2),
                       "float32_shared_copy_gb": round((bytes_per_slice - 128) * 2 * 1092 / 1e9, 2)}
    result["ratios"] = {
        "encoder": round(enc["plain_ms"] / enc["fast_ms"], 3),  # one slice at a time on both paths
        **({"encoder_batched": round(enc["plain_ms"] / enc["fast_batched_ms"], 3)} if "fast_batched_ms" in enc else {}),
        "decoder_one": round(result["decoder_per_prompt"]["plain_ms"] / result["decoder_per_prompt"]["fast_ms"], 3),
        "decoder_batched": round(result["decoder_per_prompt"]["plain_ms"] / result["decoder_per_prompt"]["fast_batched_ms"], 3),
        "train_step": round(result["train_step_batch8"]["plain_ms"] / result["train_step_batch8"]["fast_ms"], 3),
        "study": round(subset["plain"]["seconds"] / subset["fast"]["seconds"], 3),
        "study_warm": round(subset["plain"]["warm"]["seconds"] / subset["fast"]["warm"]["seconds"], 3),
    }
    if study_record is not None:
        test = study_record["splits"].get("test", {})
        result["default_study"] = {key: test.get(key) for key in ("command", "elapsed_s", "slices",
                                                                  "embeddings_computed", "peak_memory_mb")}
    return result


def write_bench(result: dict, out: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``out``.json (the record) and ``out``.md (:func:`format_bench`), atomically; returns both paths."""
    out = Path(out)
    with storage_errors(out.with_suffix(".json")):
        out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
    atomic_write_text(out.with_suffix(".md"), format_bench(result) + "\n")
    return out.with_suffix(".json"), out.with_suffix(".md")


def _targets(r: dict) -> list[str]:
    """The speed issue's targets for this kind of machine, met or not, from the numbers above."""
    def row(what: str, value: str, ok: bool) -> str:
        return f"| {what} | {value} | {'met' if ok else 'NOT met'} |"

    sub, dec, eq = r["study_subset"], r["decoder_per_prompt"], r["equivalence"]
    lines = ["| target | measured | |", "|---|---|---|"]
    if r["device"].startswith("cuda"):
        lines.append(row("decoder batched <= 0.3 ms per prompt", f"{dec['fast_batched_ms']:.3f} ms", dec["fast_batched_ms"] <= 0.3))
    else:
        steady = sub["fast"]["warm"]["steady_ms_per_prompt"]
        lines.append(row("decoder <= 30 ms per prompt, one at a time", f"{dec['fast_ms']:.1f} ms", dec["fast_ms"] <= 30))
        lines.append(row("decoder <= 30 ms per prompt, in the study (steady)", f"{steady} ms", steady is not None and steady <= 30))
        enc = r["encoder_per_slice"]
        lines.append(row("encoder >= 2x faster than eager fp32",
                         f"{enc['plain_ms'] / enc['fast_ms']:.3f}x ({enc['plain_ms']:.1f} / {enc['fast_ms']:.1f} ms)",
                         enc["plain_ms"] >= 2 * enc["fast_ms"]))
        study = r.get("default_study")
        if study and study.get("peak_memory_mb"):
            lines.append(row("peak memory of the study < 4 GB", f"{study['peak_memory_mb']} MB (`{study['command']}`)",
                             study["peak_memory_mb"] < 4096))
        if study and study.get("elapsed_s") is not None:
            cold = study.get("embeddings_computed") == study.get("slices")
            lines.append(row("default study <= 15 min from a cold cache",
                             f"{study['elapsed_s'] / 60:.1f} min (`{study['command']}`, {study['embeddings_computed']} of "
                             f"{study['slices']} images encoded)", cold and study["elapsed_s"] <= 900))
    lines.append(row("cache of the shared copy < 2.5 GB", f"{r['cache']['shared_copy_gb']} GB", r["cache"]["shared_copy_gb"] < 2.5))
    lines.append(row("fast path's masks: >= 99.9% of pixels agree, mean IoU within 0.001",
                     f"{eq['pixel_agreement']:.5%}, {abs(eq['iou_plain'] - eq['iou_fast']):.5f}",
                     eq["pixel_agreement"] >= 0.999 and abs(eq["iou_plain"] - eq["iou_fast"]) <= 0.001))
    return lines


def _with_quartiles(ms: dict, digits: int) -> str:
    """``median [q25-q75]`` of a :func:`spread`."""
    return f"{ms['ms']:.{digits}f} [{ms['q25_ms']:.{digits}f}-{ms['q75_ms']:.{digits}f}]"


def format_bench(r: dict) -> str:
    m = r["machine"]
    where = m.get("gpu") or f"{m['cpu']}, {m['cpu_count']} cores, {m['torch_threads']} torch threads"
    enc, dec, train, sub = r["encoder_per_slice"], r["decoder_per_prompt"], r["train_step_batch8"], r["study_subset"]
    on_gpu = r["device"].startswith("cuda")
    memory_kind = "GPU memory allocated by the main process" if on_gpu else "this process and its workers, PSS"
    startup = "the" if on_gpu else "the workers'"
    study_kind = ("The study decodes in the main process, 64 prompts of a slice together, while worker processes "
                  "draw the prompts" if on_gpu else
                  "The study runs one worker process per core, one thread each")
    lines = [
        f"# Benchmark: {r['model']} on {r['device']} ({where})",
        "",
        f"torch {m['torch']}, Python {m['python']}; {r['slices']} {r['split']} slices, {r['seeds']} seeds; "
        f"encoder backend of the fast path: {r['encoder_backend']}." + (f" {r['note']}" if r.get("note") else ""),
        "",
        f"One slice through the encoder and one prompt through the decoder: medians [quartiles] of "
        f"{enc['fast']['calls']} and {dec['fast']['calls']} calls per path, timed in {r['latency_rounds']} rounds "
        f"that alternate between the two paths' processes, so that both meet the machine at the same speeds.",
        "",
        "| measure | plain eager | samhw | ratio |",
        "|---|---|---|---|",
        f"| encoder, ms per slice | {_with_quartiles(enc['plain'], 1)} | {_with_quartiles(enc['fast'], 1)}"
        + (f" (batch {enc['batch']}: {enc['fast_batched_ms']:.2f})" if "fast_batched_ms" in enc else "")
        + f" | {r['ratios']['encoder']}x"
        + (f" (batch {enc['batch']}: {r['ratios']['encoder_batched']}x vs plain one at a time)" if "fast_batched_ms" in enc else "")
        + " |",
        f"| decoder, ms per prompt, one at a time | {_with_quartiles(dec['plain'], 2)} | {_with_quartiles(dec['fast'], 2)} "
        f"| {r['ratios']['decoder_one']}x |",
        f"| decoder, ms per prompt, batch {dec['batch']} | {dec['plain_batched_ms']:.2f} | {dec['fast_batched_ms']:.2f} "
        f"| {r['ratios']['decoder_batched']}x (vs plain one at a time) |",
        f"| decoder-only training step, batch 8 (prompts of the default training mix), ms | {train['plain_ms']:.0f} | "
        f"{train['fast_ms']:.0f} | {r['ratios']['train_step']}x |",
        f"| study prompts on {r['slices']} slices from a cold cache, s | {sub['plain']['seconds']:.1f} | "
        f"{sub['fast']['seconds']:.1f} | {r['ratios']['study']}x |",
        f"| the same again from the warm cache, s | {sub['plain']['warm']['seconds']:.1f} | "
        f"{sub['fast']['warm']['seconds']:.1f} | {r['ratios']['study_warm']}x |",
        f"| steady throughput from the warm cache, ms per prompt | {sub['plain']['warm']['steady_ms_per_prompt']} | "
        f"{sub['fast']['warm']['steady_ms_per_prompt']} | |",
        f"| peak memory, cold run ({memory_kind}), MB | {sub['plain']['peak_mb']} | "
        f"{sub['fast']['peak_mb']} | |",
        f"| mean IoU over those {sub['fast']['prompts']} prompts | {sub['plain']['mean_iou']:.5f} | "
        f"{sub['fast']['mean_iou']:.5f} | |",
    ]
    eq = r["equivalence"]
    lines.append(f"| masks of every study prompt (seed 0): pixels agreeing | | {eq['pixel_agreement']:.5%} | "
                 f"mean IoU {eq['iou_plain']:.5f} vs {eq['iou_fast']:.5f} |")
    c = r["cache"]
    kept = r.get("plain_allocator_kept")
    if kept:
        lines += ["", f"Each path is timed in a process of its own. The plain path, timed again in its process after "
                      f"samhw's allocator setting (freed memory kept for reuse, `samhw.resources.keep_freed_memory`): "
                      f"encoder {kept['encoder_ms']:.1f} ms per slice, decoder {kept['decoder_ms']:.2f} ms per prompt "
                      f"one at a time."]
    a = r.get("arithmetic")
    if a and not on_gpu:  # on a GPU these small kernels are bound by their launches, not by arithmetic
        enc_floor = 1000 * a["encoder_gflop"] / a["matmul_gflops"]
        dec_floor = 1000 * a["fast_decoder_gflop"] / a["matmul_gflops"]
        lines += ["", f"Arithmetic (torch's flop counter): the encoder does {a['encoder_gflop']} GFLOP per slice; at "
                      f"this machine's fp32 matrix-product rate ({a['matmul_gflops']} GFLOP/s, a 2048x2048 product) "
                      f"that is at least {enc_floor:.0f} ms, and samhw's encoder takes {enc['fast_ms']:.0f} ms "
                      f"({enc_floor / enc['fast_ms']:.0%} of that ceiling). The decoder does {a['plain_decoder_gflop']} "
                      f"GFLOP per box prompt as SAM computes it and {a['fast_decoder_gflop']} as samhw rearranges it: "
                      f"at least {dec_floor:.1f} ms, against {dec['fast_ms']:.1f} ms measured one at a time."]
    lines += ["", f"{study_kind}: its steady throughput (drawing, "
                  f"decoding, scoring, from cached embeddings) is {sub['fast']['warm']['steady_ms_per_prompt']} ms per "
                  f"prompt; with {startup} start-up and the encoding of a cold cache, {sub['fast']['ms_per_prompt']} ms.",
              "", *_targets(r),
              "", f"Embedding cache: {c['bytes_per_slice']:,} bytes per slice (float16), {c['shared_copy_gb']} GB for the "
                  f"1092 slices of the shared copy ({c['float32_shared_copy_gb']} GB in float32)."]
    return "\n".join(lines)
