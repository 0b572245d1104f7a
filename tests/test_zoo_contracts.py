"""Zoo archives in their exact layout, served over HTTP from 127.0.0.1, through the whole runner:
keypoint models (OKS metrics), Mask R-CNN (segm metrics) and the CenterNet MobileNetV2 signature
(float32 ``input``, generic ``output_N``) all give real numbers."""

from __future__ import annotations

import functools
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from runner import zoo
from tests import models

MODELS = {"centernet_hg104_kpts": "keypoints", "mask_rcnn_inception_resnet_v2": "masks",
          "centernet_mobilenetv2_fpn_kpts": "numbered_outputs"}
W, H = 64, 48


def _archive(model_dir: Path, top: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(model_dir, arcname=f"{top}/saved_model")
        for name, data in (("pipeline.config", b"model {}\n"), ("checkpoint/checkpoint", b"")):
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def zoo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("zoo")
    for key, kind in MODELS.items():
        archive = zoo.get(key).archive(None)
        model = models.build_contract(root / f"build-{key}", kind)
        target = root / "www" / archive.date / archive.file_name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_archive(model, archive.extracted_dir))
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root / "www"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _person_dataset(root: Path) -> tuple[Path, Path, Path]:
    """3 images with one person each, at the box and keypoints the fixtures output."""
    (root / "img").mkdir(parents=True)
    y0, x0, y1, x1 = (v * s for v, s in zip(models.BOX, (H, W, H, W), strict=True))
    kps: list[Any] = []
    for ky, kx in models.KEYPOINTS:
        kps += [kx * W, ky * H, 2]
    images, anns = [], []
    for i in range(1, 4):
        Image.new("RGB", (W, H), (i * 40, 90, 120)).save(root / "img" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": W, "height": H})
        anns.append({"id": i, "image_id": i, "category_id": 1, "iscrowd": 0,
                     "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                     "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
                     "num_keypoints": 17, "keypoints": kps})
    cats = [{"id": 1, "name": "person", "keypoints": [str(k) for k in range(17)],
             "skeleton": []}]
    doc = {"images": images, "annotations": anns, "categories": cats}
    (root / "instances.json").write_text(json.dumps(doc))
    (root / "keypoints.json").write_text(json.dumps(doc))
    return root / "img", root / "instances.json", root / "keypoints.json"


@pytest.mark.slow
def test_keypoints_masks_and_numbered_outputs_through_the_runner(
        tmp_path: Path, zoo_server: str) -> None:
    images, instances, keypoints = _person_dataset(tmp_path / "data")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "runner", "-m", f"hydra.sweep.dir={tmp_path / 'm'}",
           f"model={','.join(MODELS)}", "dataset=coco_files", f"dataset.images_dir={images}",
           f"dataset.annotations={instances}", f"dataset.keypoint_annotations={keypoints}",
           "benchmark.warmup=1", "benchmark.telemetry=false", f"cache_dir={tmp_path / 'cache'}"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "DETBENCH_ZOO_URL": zoo_server}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("detbench")
    assert exp is not None
    runs = {r.data.tags["detbench.model"]: r for r in client.search_runs([exp.experiment_id])
            if "detbench.model" in r.data.tags}
    for key in MODELS:
        m = runs[key].data.metrics
        assert runs[key].info.status == "FINISHED", key
        assert m["bbox.AP"] == pytest.approx(1.0), key
    for key in ("centernet_hg104_kpts", "centernet_mobilenetv2_fpn_kpts"):
        assert runs[key].data.metrics["keypoints.AP"] == pytest.approx(1.0), key
    assert runs["mask_rcnn_inception_resnet_v2"].data.metrics["segm.AP"] == pytest.approx(1.0)
    tflite = runs["centernet_mobilenetv2_fpn_kpts"].data.tags
    assert tflite["backend.input_name"] == "input" and tflite["backend.input_dtype"] == "float32"
