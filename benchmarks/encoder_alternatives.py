"""Other ways of running LiteMedSAM's image encoder on the CPU, against eager PyTorch fp32 and
samhw's ONNX Runtime path: time per slice and fidelity to eager fp32 (issue 5's "encoder at least
2x faster than eager fp32", with the study's equivalence tolerance).

    python benchmarks/encoder_alternatives.py [--data DIR] [--slices 8] [--rounds 5] [--out results/bench/encoder-alternatives-cpu]

Backends, all fed the same preprocessed (1, 3, 256, 256) input with the same number of threads:
  eager      plain PyTorch fp32 (the reference)
  onnx       samhw's path: the encoder exported to ONNX, run by ONNX Runtime in fp32
  compile    torch.compile (inductor, weights frozen into the graph), fp32
  onnx-int8  the ONNX file with its matrix products quantised to int8 on the fly (onnxruntime.quantization)
  openvino   OpenVINO fp32, where `pip install openvino` was run (skipped otherwise)
Time: one process, rounds that alternate between the backends (every slice once per round), so
that all meet the shared machine at the same speeds; medians [quartiles]. Fidelity: each
backend's fp32 embeddings of the slices against eager's (relative L2 error), and the masks that
SAM's plain decoder makes from them for every study prompt (seed 0): pixels agreeing with the
masks from eager's embeddings, and mean IoU against the truth.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from samhw.bench import describe_machine, spread  # noqa: E402
from samhw.data import load_dataset  # noqa: E402
from samhw.metrics import iou  # noqa: E402
from samhw.models import SamModel, load_model  # noqa: E402
from samhw.onnx_encoder import OnnxEncoder  # noqa: E402
from samhw.prompts import Target, parse_prompts  # noqa: E402
from samhw.study import EXPERIMENTS  # noqa: E402

Encoder = Callable[[torch.Tensor], torch.Tensor]


def _compiled(model: SamModel) -> Encoder:
    import torch._inductor.config as inductor

    inductor.freezing = True
    return torch.compile(model.image_encoder)


def _int8(model: SamModel, folder: Path) -> Encoder:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = folder / "encoder-int8.onnx"
    quantize_dynamic(str(model.onnx_path), str(path), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8)
    return OnnxEncoder(model.image_encoder, model.input_size, path)


def _openvino(model: SamModel) -> Encoder | None:
    try:
        import openvino
    except ImportError:
        return None
    compiled = openvino.Core().compile_model(str(model.onnx_path), "CPU", {
        "INFERENCE_NUM_THREADS": torch.get_num_threads(), "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return lambda x: torch.from_numpy(request.infer({0: x.numpy()})[0].copy())


BUILDERS: dict[str, Callable[[SamModel, SamModel, Path], Encoder | None]] = {
    "eager": lambda plain, fast, folder: plain.image_encoder,
    "onnx": lambda plain, fast, folder: fast.ready_encoder(),
    "compile": lambda plain, fast, folder: _compiled(plain),
    "onnx-int8": lambda plain, fast, folder: _int8(fast, folder),
    "openvino": lambda plain, fast, folder: _openvino(fast),
}

#: The backend of this worker process and its inputs (see :func:`_setup`).
_WORKER: dict = {}


def _setup(name: str, data: str | None, slices: int, folder: str) -> None:
    """Build backend ``name`` in this process and make its inputs."""
    plain = load_model("litemedsam", device="cpu", plain=True)
    fast = load_model("litemedsam", device="cpu", cache_dir=folder)
    dataset = load_dataset(data, "test", limit=slices)
    _WORKER["inputs"] = [plain.preprocess([s.image]) for s in dataset.slices]
    _WORKER["encoder"] = BUILDERS[name](plain, fast, Path(folder))


def _first_call() -> float | None:
    """Seconds of the backend's first call, or None where it cannot run here (not installed)."""
    if _WORKER["encoder"] is None:
        return None
    return _call_ms(_WORKER["inputs"][0]) / 1000


def _call_ms(x: torch.Tensor) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        _WORKER["encoder"](x)
        return 1000 * (time.perf_counter() - start)


def _round() -> list[float]:
    """Milliseconds of one call on each input."""
    return [_call_ms(x) for x in _WORKER["inputs"]]


def _embeddings() -> list[np.ndarray]:
    with torch.inference_mode():
        return [_WORKER["encoder"](x).float().numpy() for x in _WORKER["inputs"]]


def measure(data: str | None, slices: int, rounds: int, folder: str) -> tuple[dict, dict, dict]:
    """Per backend, each in a process of its own (no backend's thread pool meets another's): the
    seconds of its first call, the spread of its milliseconds per slice over rounds that alternate
    between the processes, alive side by side, and its embeddings."""
    context = multiprocessing.get_context("spawn")
    pools = {name: ProcessPoolExecutor(1, mp_context=context, initializer=_setup, initargs=(name, data, slices, folder))
             for name in BUILDERS}
    try:
        first = {name: pool.submit(_first_call).result() for name, pool in pools.items()}
        available = [name for name in pools if first[name] is not None]
        samples: dict[str, list[float]] = {name: [] for name in available}
        for r in range(rounds):  # each round starts one backend later: none always follows the same one
            for name in available[r % len(available):] + available[:r % len(available)]:
                samples[name] += pools[name].submit(_round).result()
        embeddings = {name: pools[name].submit(_embeddings).result() for name in available}
    finally:
        for pool in pools.values():
            pool.shutdown()
    return ({name: round(first[name], 1) for name in available}, {name: spread(s) for name, s in samples.items()},
            embeddings)


def fidelity(plain: SamModel, embeddings: dict[str, list[np.ndarray]], dataset) -> dict:
    """Per backend: the largest relative L2 error of its embeddings against eager's, the share of
    mask pixels agreeing with eager's masks, and the mean IoU, over every study prompt (seed 0)."""
    specs = parse_prompts([p for e in EXPERIMENTS.values() for p in e])
    out = {name: {"embedding_rel_error": 0.0, "agree": 0, "ious": []} for name in embeddings}
    total = 0
    for i, item in enumerate(dataset.slices):
        target = Target(item.mask, item.image, item.slice_id)
        prompts = [(spec.draw(target, 0), spec.multimask) for spec in specs]
        eager = torch.from_numpy(embeddings["eager"][i])
        reference = [plain.predict(eager, [p], item.mask.shape, multimask)[0][0] for p, multimask in prompts]
        total += sum(m.size for m in reference)
        for name, backend in embeddings.items():
            embedding = torch.from_numpy(backend[i])
            error = float(torch.linalg.norm(embedding - eager) / torch.linalg.norm(eager))
            out[name]["embedding_rel_error"] = max(out[name]["embedding_rel_error"], error)
            for (prompt, multimask), ref in zip(prompts, reference):
                mask = plain.predict(embedding, [prompt], item.mask.shape, multimask)[0][0]
                out[name]["agree"] += int((mask == ref).sum())
                out[name]["ious"].append(iou(mask, item.mask))
    return {name: {"embedding_rel_error": float(f"{r['embedding_rel_error']:.3g}"),
                   "pixel_agreement": r["agree"] / total, "mean_iou": float(np.mean(r["ious"])), "prompts": len(r["ious"])}
            for name, r in out.items()}


def markdown(r: dict) -> str:
    eager = r["time"]["eager"]["ms"]
    lines = [f"# Image encoder on the CPU: alternatives ({r['machine']['cpu']}, {r['machine']['cpu_count']} cores, "
             f"{r['machine']['torch_threads']} threads)", "",
             f"torch {r['machine']['torch']}; {r['slices']} test slices, each backend in a process of its own, timed "
             f"in {r['rounds']} rounds that alternate between them (in a rotating order); masks of {r['fidelity']['eager']['prompts']} study "
             "prompts (seed 0) by SAM's plain decoder.", "",
             "| backend | ms per slice, median [quartiles] | faster than eager | embedding error (relative L2, max) "
             "| mask pixels agreeing with eager's | mean IoU |", "|---|---|---|---|---|---|"]
    for name, t in r["time"].items():
        f = r["fidelity"][name]
        lines.append(f"| {name} | {t['ms']:.1f} [{t['q25_ms']:.1f}-{t['q75_ms']:.1f}] | {eager / t['ms']:.3f}x "
                     f"| {f['embedding_rel_error']:.3g} | {100 * f['pixel_agreement']:.5f}% | {f['mean_iou']:.5f} |")
    lines += ["", f"torch.compile took {r['first_call_s']['compile']:.0f} s on its first call. Made by "
              "`python benchmarks/encoder_alternatives.py`" + ("" if "openvino" in r["time"] else
                                                                 " (OpenVINO not installed: no row)") + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="results/bench/encoder-alternatives-cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        first, time_, embeddings = measure(args.data, args.slices, args.rounds, folder)
    dataset = load_dataset(args.data, "test", limit=args.slices)
    result = {"machine": describe_machine(torch.device("cpu")), "slices": len(dataset), "rounds": args.rounds,
              "first_call_s": first, "time": time_,
              "fidelity": fidelity(load_model("litemedsam", device="cpu", plain=True), embeddings, dataset)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
