"""``python -m runner.inspect MODEL_DIR [--images DIR --annotations FILE]``: what a SavedModel
takes and returns, and the ``model.*`` overrides to benchmark it, so nobody has to guess.

It prints every signature's inputs and outputs, runs one image (the first of the dataset, or a
synthetic 480x640 image), prints each output's shape, dtype and value range, and proposes
overrides from the names, shapes and values. With a COCO-format dataset it also runs the first
images and lets ``runner.checks`` pick the reading of the outputs that fits the ground truth.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runner import signatures

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _find(outputs: Mapping[str, np.ndarray], *words: str) -> str | None:
    for word in words:
        hits = sorted(k for k in outputs if word in k.lower() and "raw" not in k.lower()
                      and "multiclass" not in k.lower() and "strided" not in k.lower())
        if hits:
            return min(hits, key=len)
    return None


def propose(outputs: Mapping[str, np.ndarray], input_name: str, input_dtype: str,
            input_shape: Sequence[int | None], fed_hw: tuple[int, int]) -> list[str]:
    """``model.*`` overrides read off one call's outputs (names, shapes, value ranges)."""
    out = [f"model.input_name={input_name}", f"model.input_dtype={input_dtype}"]
    if set(signatures.ZOO_KEYS.values()) <= set(outputs):
        boxes = np.asarray(outputs["detection_boxes"])
        if "image_info" in outputs:
            return [*out, "model.outputs=custom  (or model=model_garden)",
                    *(f"model.output_keys.{r}={k}" for r, k in signatures.ZOO_KEYS.items()),
                    "model.output_keys.image_info=image_info", "model.box_format=yxyx",
                    "model.box_frame=image_info"]
        if boxes.size and float(np.nanmax(np.abs(boxes))) > 1.5:
            return [*out, "model.outputs=custom",
                    *(f"model.output_keys.{r}={k}" for r, k in signatures.ZOO_KEYS.items()),
                    "model.box_format=yxyx  (pixels; check the frame: model.box_frame)"]
        adapter = "zoo"
        if "detection_keypoints" in outputs:
            adapter = "zoo_keypoints"
        elif "detection_masks" in outputs:
            adapter = "zoo_masks"
        return [*out, f"model.outputs={adapter}  (or model=tfhub)"]
    if any(k.startswith("output_") for k in outputs):
        return [*out, "model.outputs=numbered_outputs"]
    keys = {"boxes": _find(outputs, "box"), "classes": _find(outputs, "class", "label"),
            "scores": _find(outputs, "score", "confidence", "conf"),
            "num_detections": _find(outputs, "num")}
    out.append("model.outputs=custom")
    out += [f"model.output_keys.{r}={k}" for r, k in keys.items() if k]
    missing = [r for r in signatures.ROLES[:3] if not keys[r]]
    if missing:
        out.append(f"# could not tell which output is {', '.join(missing)}: set "
                   f"model.output_keys.{{{','.join(missing)}}}")
    if keys["boxes"]:
        boxes = np.asarray(outputs[keys["boxes"]])
        finite = boxes[np.isfinite(boxes)]
        if finite.size and float(np.abs(finite).max()) > 1.5:
            out.append("model.box_format=yxyx  (pixels; or xyxy / xywh / center_xywh: check "
                       "with --annotations)")
        else:
            out.append("model.box_format=rel_yxyx  (or rel_xyxy / rel_xywh / "
                       "rel_center_xywh: check with --annotations)")
        if boxes.ndim == 2:
            out.append("# outputs have no batch dimension: accepted by outputs=custom")
    if keys["classes"]:
        classes = np.asarray(outputs[keys["classes"]])
        if classes.size and float(np.min(classes)) == 0:
            out.append("# class 0 appears: 0-based? model.class_offset=1 or model.class_map="
                       "coco80 (check with --annotations)")
    if input_shape[1:3] != [None, None] and None not in input_shape[1:3]:
        out.append(f"# fixed input {input_shape[1]}x{input_shape[2]}: detbench resizes; "
                   "model.resize=pad keeps the aspect ratio")
    if input_dtype != "uint8":
        out.append("# float input: set model.input_range ([0,255] | [0,1] | [-1,1]), "
                   "model.input_mean/input_std and model.channel_order as the model was "
                   "trained (check with --annotations)")
    return out


def _load(model_dir: Path, signature: str) -> tuple[Any, Any]:
    import tensorflow as tf

    model = tf.saved_model.load(str(model_dir))
    print(f"SavedModel {model_dir}")
    for name, fn in dict(model.signatures).items():
        print(f"  signature {name!r}")
        for key, spec in sorted(fn.structured_input_signature[1].items()):
            print(f"    input  {key}: {spec.dtype.name} {spec.shape.as_list()}")
        for key, spec in sorted(fn.structured_outputs.items()):
            print(f"    output {key}: {spec.dtype.name} {spec.shape.as_list()}")
    if signature not in model.signatures:
        raise SystemExit(f"no signature {signature!r}; it has {sorted(model.signatures)}")
    return model, model.signatures[signature]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.inspect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--signature", default="serving_default")
    parser.add_argument("--images", type=Path, help="folder of a COCO-format dataset's images")
    parser.add_argument("--annotations", type=Path, help="its instances JSON")
    args = parser.parse_args(argv)
    if not (args.model_dir / "saved_model.pb").is_file():
        print(f"inspect: {str(args.model_dir)!r} has no saved_model.pb", file=sys.stderr)
        return 2
    import tensorflow as tf

    from runner import checks, config, data
    from runner.detections import Frame

    _model, fn = _load(args.model_dir, args.signature)
    inputs = fn.structured_input_signature[1]
    image_inputs = [k for k, s in inputs.items() if s.shape.rank == 4]
    if len(image_inputs) != 1:
        print(f"inspect: cannot tell the image input among {sorted(inputs)}", file=sys.stderr)
        return 2
    name = image_inputs[0]
    spec = inputs[name]
    shape = [d if d is None else int(d) for d in spec.shape.as_list()]
    fixed = (shape[1], shape[2]) if shape[1] and shape[2] else None
    records: list[data.ImageRecord] = []
    if args.images and args.annotations:
        import json

        doc = json.loads(args.annotations.read_text())
        infos = sorted(doc["images"], key=lambda i: int(i["id"]))[:checks.FIRST_CALLS]
        records = [data.ImageRecord(int(i["id"]), args.images / i["file_name"], int(i["width"]),
                                    int(i["height"])) for i in infos]
    in_spec = data.InputSpec(dtype=spec.dtype.name, size=fixed)
    if records:
        prepared = data.prepare(records, spec=in_spec, progress=False)
    else:
        image = tf.cast(tf.random.stateless_uniform([1, 480, 640, 3], [0, 1], 0, 255),
                        spec.dtype)
        if fixed:
            image = tf.cast(tf.image.resize(tf.cast(image, tf.float32), fixed), spec.dtype)
        frame = Frame((480, 640), (int(image.shape[1]), int(image.shape[2])))
        prepared = [data.PreparedImage(data.ImageRecord(0, Path("synthetic"), 640, 480), image,
                                       frame)]

    def predict(tensor: Any) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in fn(**{name: tensor}).items()}

    outputs = predict(prepared[0].tensor)
    print(f"\none call on {prepared[0].record.path.name} fed as {list(prepared[0].tensor.shape)}:")
    for row in signatures.describe(outputs):
        print(f"  {row['key']}: {row['dtype']} {row['shape']} min {row['min']} max {row['max']}")
    fed = (int(prepared[0].tensor.shape[1]), int(prepared[0].tensor.shape[2]))
    proposal = propose(outputs, name, spec.dtype.name, shape, fed)
    if records:
        proposal = _checked(proposal, predict, prepared, args.annotations, config)
    print("\nproposed overrides (python -m runner model=custom model.path=... <these>):")
    for line in proposal:
        print(f"  {line}")
    return 0


def _checked(proposal: list[str], predict: Any, prepared: Sequence[Any], annotations: Path,
             config: Any) -> list[str]:
    """Run the first images under the proposal and let runner.checks correct it against the
    ground truth (the same search a job runs before timing)."""
    from omegaconf import OmegaConf

    from runner import checks

    dotlist = [line.split()[0].removeprefix("model.") for line in proposal
               if line.startswith("model.")]
    model = OmegaConf.merge(OmegaConf.structured(config.ModelConfig),
                            OmegaConf.from_dotlist(["name=x", "display_name=x", *dotlist]))
    reader = signatures.from_config(model)  # type: ignore[arg-type]
    categories, truth = checks.load_truth(annotations, [p.record.image_id for p in prepared])
    outputs = [predict(p.tensor) for p in prepared]
    verdict = checks.examine(reader, outputs, [p.frame for p in prepared],
                             [truth.get(p.record.image_id) for p in prepared], categories)
    a = verdict.agreement
    print(f"\nagainst the ground truth of {len(prepared)} images: {a.same_class} of "
          f"{a.confident} confident detections match their class (mean IoU {a.mean_iou:.2f})")
    if not verdict.suggestion:
        if verdict.fatal or verdict.nothing_matches:
            print(f"  {verdict.message()}")
        return proposal
    fixed = {s.split("=")[0]: s for s in verdict.suggestion}
    kept = [line for line in proposal if line.split("=")[0] not in fixed]
    print(f"  corrected by the ground truth: {' '.join(verdict.suggestion)}")
    return kept + list(verdict.suggestion)


if __name__ == "__main__":
    sys.exit(main())
