"""The TF2 Detection Model Zoo catalogue as typed data: one :class:`ZooModel` per architecture,
one :class:`ZooArchive` per published resolution, and the public benchmark table's 41 rows.

Source: tensorflow/models, research/object_detection/g3doc/tf2_detection_zoo.md (archives, dates,
published V100 speed and COCO mAP) and the "TensorFlow 2 Detection Model Zoo Benchmarks" table
(display names and row order). ``python -m runner.zoo_conf`` turns this module into the Hydra
configs ``conf/model/<key>.yaml``, ``conf/row/*.yaml`` and ``conf/experiment/public_table.yaml``.
Nothing here touches the network (that is :mod:`runner.acquire`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

ZOO_BASE_URL = "https://download.tensorflow.org/models/object_detection/tf2"
DEFAULT_DATE = "20200711"

OutputsKind = Literal["boxes", "keypoints", "masks"]
#: ``zoo``: exporter_lib_v2's signature (uint8 ``input_tensor``, ``detection_*`` outputs);
#: ``tflite_graph``: exported through export_tflite_graph_tf2 but shipped as a SavedModel
#: (float32 ``input``, generic ``output_N`` keys, read by the ``numbered_outputs`` adapter)
SignatureStyle = Literal["zoo", "tflite_graph"]


class UnknownZooEntry(KeyError):
    """An unknown model key or resolution; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class ZooArchive:
    """One downloadable archive: ``<DATE>/<archive>.tar.gz``, extracting to ``<extracted_dir>/``."""

    archive: str  # file name without .tar.gz
    date: str  # the URL's date folder, e.g. "20200711"
    extracted_dir: str  # top-level directory inside the archive
    published_ms: int  # the zoo's own V100 speed
    published_map: str  # COCO 2017 val box mAP text as published ("40.0/61.4": box / keypoint)

    @property
    def file_name(self) -> str:
        return f"{self.archive}.tar.gz"


@dataclass(frozen=True)
class ZooModel:
    """An architecture of the zoo and how to call it; ``archives`` maps resolution -> archive,
    the first resolution being the model's default."""

    key: str
    display_name: str  # exactly the public table's "Model" text
    outputs: OutputsKind
    signature_style: SignatureStyle
    archives: Mapping[str, ZooArchive] = field(hash=False)

    @property
    def resolutions(self) -> tuple[str, ...]:
        return tuple(self.archives)

    @property
    def default_resolution(self) -> str:
        return self.resolutions[0]

    def archive(self, resolution: str | None = None) -> ZooArchive:
        """The archive for ``resolution`` (None or "default": the model's first)."""
        if resolution in (None, "default"):
            resolution = self.default_resolution
        assert resolution is not None
        try:
            return self.archives[resolution]
        except KeyError:
            raise UnknownZooEntry(
                f"resolution {resolution!r} was not published for zoo model {self.key!r}; "
                f"valid: {', '.join(self.resolutions)}") from None

    @property
    def adapter(self) -> str:
        """The output adapter name (``model.outputs`` in the Hydra config)."""
        if self.signature_style == "tflite_graph":
            return "numbered_outputs"
        return {"boxes": "zoo", "keypoints": "zoo_keypoints", "masks": "zoo_masks"}[self.outputs]

    @property
    def input_name(self) -> str:
        return "input" if self.signature_style == "tflite_graph" else "input_tensor"

    @property
    def input_dtype(self) -> str:
        return "float32" if self.signature_style == "tflite_graph" else "uint8"


# (key, display name, outputs, signature style), in the public table's order of first appearance.
_ARCHITECTURES: tuple[tuple[str, str, OutputsKind, SignatureStyle], ...] = (
    ("centernet_hg104", "CenterNet HourGlass104", "boxes", "zoo"),
    ("centernet_hg104_kpts", "CenterNet HourGlass104 Keypoints", "keypoints", "zoo"),
    ("centernet_resnet50_v1_fpn", "CenterNet Resnet50 V1 FPN", "boxes", "zoo"),
    ("centernet_resnet50_v1_fpn_kpts", "CenterNet Resnet50 V1 FPN Keypoints", "keypoints", "zoo"),
    ("centernet_resnet101_v1_fpn", "CenterNet Resnet101 V1 FPN", "boxes", "zoo"),
    ("centernet_resnet50_v2", "CenterNet Resnet50 V2", "boxes", "zoo"),
    ("centernet_resnet50_v2_kpts", "CenterNet Resnet50 V2 Keypoints", "keypoints", "zoo"),
    ("centernet_mobilenetv2_fpn", "CenterNet MobileNetV2 FPN", "boxes", "tflite_graph"),
    ("centernet_mobilenetv2_fpn_kpts", "CenterNet MobileNetV2 FPN Keypoints", "keypoints",
     "tflite_graph"),
    *((f"efficientdet_d{i}", f"EfficientDet D{i}", "boxes", "zoo") for i in range(8)),
    ("ssd_mobilenet_v2", "SSD MobileNet v2", "boxes", "zoo"),
    ("ssd_mobilenet_v1_fpn", "SSD MobileNet V1 FPN", "boxes", "zoo"),
    ("ssd_mobilenet_v2_fpnlite", "SSD MobileNet V2 FPNLite", "boxes", "zoo"),
    ("ssd_resnet50_v1_fpn", "SSD ResNet50 V1 FPN RetinaNet50", "boxes", "zoo"),
    ("ssd_resnet101_v1_fpn", "SSD ResNet101 V1 FPN RetinaNet101", "boxes", "zoo"),
    ("ssd_resnet152_v1_fpn", "SSD ResNet152 V1 FPN RetinaNet152", "boxes", "zoo"),
    ("faster_rcnn_resnet50_v1", "Faster R-CNN ResNet50 V1", "boxes", "zoo"),
    ("faster_rcnn_resnet101_v1", "Faster R-CNN ResNet101 V1", "boxes", "zoo"),
    ("faster_rcnn_resnet152_v1", "Faster R-CNN ResNet152 V1", "boxes", "zoo"),
    ("faster_rcnn_inception_resnet_v2", "Faster R-CNN Inception ResNet V2", "boxes", "zoo"),
    ("mask_rcnn_inception_resnet_v2", "Mask R-CNN Inception ResNet V2", "masks", "zoo"),
)

# The public table's 41 rows in its order:
# (key, resolution, archive, date (None: 20200711), extracted dir (None: the archive), ms, mAP).
_ROWS: tuple[tuple[str, str, str, str | None, str | None, int, str], ...] = (
    ("centernet_hg104", "512x512", "centernet_hg104_512x512_coco17_tpu-8", "20200713", None,
     70, "41.9"),
    ("centernet_hg104_kpts", "512x512", "centernet_hg104_512x512_kpts_coco17_tpu-32", None, None,
     76, "40.0/61.4"),
    ("centernet_hg104", "1024x1024", "centernet_hg104_1024x1024_coco17_tpu-32", "20200713", None,
     197, "44.5"),
    ("centernet_hg104_kpts", "1024x1024", "centernet_hg104_1024x1024_kpts_coco17_tpu-32", None,
     None, 211, "42.8/64.5"),
    ("centernet_resnet50_v1_fpn", "512x512", "centernet_resnet50_v1_fpn_512x512_coco17_tpu-8",
     None, None, 27, "31.2"),
    ("centernet_resnet50_v1_fpn_kpts", "512x512",
     "centernet_resnet50_v1_fpn_512x512_kpts_coco17_tpu-8", None, None, 30, "29.3/50.7"),
    ("centernet_resnet101_v1_fpn", "512x512", "centernet_resnet101_v1_fpn_512x512_coco17_tpu-8",
     None, None, 34, "34.2"),
    ("centernet_resnet50_v2", "512x512", "centernet_resnet50_v2_512x512_coco17_tpu-8", None, None,
     27, "29.5"),
    ("centernet_resnet50_v2_kpts", "512x512", "centernet_resnet50_v2_512x512_kpts_coco17_tpu-8",
     None, None, 30, "27.6/48.2"),
    ("centernet_mobilenetv2_fpn", "512x512", "centernet_mobilenetv2fpn_512x512_coco17_od",
     "20210210", "centernet_mobilenetv2_fpn_od", 6, "23.4"),
    ("centernet_mobilenetv2_fpn_kpts", "512x512", "centernet_mobilenetv2fpn_512x512_coco17_kpts",
     "20210210", "centernet_mobilenetv2_fpn_kpts", 6, "41.7"),
    ("efficientdet_d0", "512x512", "efficientdet_d0_coco17_tpu-32", None, None, 39, "33.6"),
    ("efficientdet_d1", "640x640", "efficientdet_d1_coco17_tpu-32", None, None, 54, "38.4"),
    ("efficientdet_d2", "768x768", "efficientdet_d2_coco17_tpu-32", None, None, 67, "41.8"),
    ("efficientdet_d3", "896x896", "efficientdet_d3_coco17_tpu-32", None, None, 95, "45.4"),
    ("efficientdet_d4", "1024x1024", "efficientdet_d4_coco17_tpu-32", None, None, 133, "48.5"),
    ("efficientdet_d5", "1280x1280", "efficientdet_d5_coco17_tpu-32", None, None, 222, "49.7"),
    ("efficientdet_d6", "1280x1280", "efficientdet_d6_coco17_tpu-32", None, None, 268, "50.5"),
    ("efficientdet_d7", "1536x1536", "efficientdet_d7_coco17_tpu-32", None, None, 325, "51.2"),
    ("ssd_mobilenet_v2", "320x320", "ssd_mobilenet_v2_320x320_coco17_tpu-8", None, None,
     19, "20.2"),
    ("ssd_mobilenet_v1_fpn", "640x640", "ssd_mobilenet_v1_fpn_640x640_coco17_tpu-8", None, None,
     48, "29.1"),
    ("ssd_mobilenet_v2_fpnlite", "320x320", "ssd_mobilenet_v2_fpnlite_320x320_coco17_tpu-8", None,
     None, 22, "22.2"),
    ("ssd_mobilenet_v2_fpnlite", "640x640", "ssd_mobilenet_v2_fpnlite_640x640_coco17_tpu-8", None,
     None, 39, "28.2"),
    ("ssd_resnet50_v1_fpn", "640x640", "ssd_resnet50_v1_fpn_640x640_coco17_tpu-8", None, None,
     46, "34.3"),
    ("ssd_resnet50_v1_fpn", "1024x1024", "ssd_resnet50_v1_fpn_1024x1024_coco17_tpu-8", None, None,
     87, "38.3"),
    ("ssd_resnet101_v1_fpn", "640x640", "ssd_resnet101_v1_fpn_640x640_coco17_tpu-8", None, None,
     57, "35.6"),
    ("ssd_resnet101_v1_fpn", "1024x1024", "ssd_resnet101_v1_fpn_1024x1024_coco17_tpu-8", None,
     None, 104, "39.5"),
    ("ssd_resnet152_v1_fpn", "640x640", "ssd_resnet152_v1_fpn_640x640_coco17_tpu-8", None, None,
     80, "35.4"),
    ("ssd_resnet152_v1_fpn", "1024x1024", "ssd_resnet152_v1_fpn_1024x1024_coco17_tpu-8", None,
     None, 111, "39.6"),
    ("faster_rcnn_resnet50_v1", "640x640", "faster_rcnn_resnet50_v1_640x640_coco17_tpu-8", None,
     None, 53, "29.3"),
    ("faster_rcnn_resnet50_v1", "1024x1024", "faster_rcnn_resnet50_v1_1024x1024_coco17_tpu-8",
     None, None, 65, "31.0"),
    ("faster_rcnn_resnet50_v1", "800x1333", "faster_rcnn_resnet50_v1_800x1333_coco17_gpu-8", None,
     None, 65, "31.6"),
    ("faster_rcnn_resnet101_v1", "640x640", "faster_rcnn_resnet101_v1_640x640_coco17_tpu-8", None,
     None, 55, "31.8"),
    ("faster_rcnn_resnet101_v1", "1024x1024", "faster_rcnn_resnet101_v1_1024x1024_coco17_tpu-8",
     None, None, 72, "37.1"),
    ("faster_rcnn_resnet101_v1", "800x1333", "faster_rcnn_resnet101_v1_800x1333_coco17_gpu-8",
     None, None, 77, "36.6"),
    ("faster_rcnn_resnet152_v1", "640x640", "faster_rcnn_resnet152_v1_640x640_coco17_tpu-8", None,
     None, 64, "32.4"),
    ("faster_rcnn_resnet152_v1", "1024x1024", "faster_rcnn_resnet152_v1_1024x1024_coco17_tpu-8",
     None, None, 85, "37.6"),
    ("faster_rcnn_resnet152_v1", "800x1333", "faster_rcnn_resnet152_v1_800x1333_coco17_gpu-8",
     None, None, 101, "37.4"),
    ("faster_rcnn_inception_resnet_v2", "640x640",
     "faster_rcnn_inception_resnet_v2_640x640_coco17_tpu-8", None, None, 206, "37.7"),
    ("faster_rcnn_inception_resnet_v2", "1024x1024",
     "faster_rcnn_inception_resnet_v2_1024x1024_coco17_tpu-8", None, None, 236, "38.7"),
    ("mask_rcnn_inception_resnet_v2", "1024x1024",
     "mask_rcnn_inception_resnet_v2_1024x1024_coco17_gpu-8", None, None, 301, "39.0/34.6"),
)


def _build() -> dict[str, ZooModel]:
    archives: dict[str, dict[str, ZooArchive]] = {key: {} for key, *_ in _ARCHITECTURES}
    for key, resolution, name, date, extracted, ms, mean_ap in _ROWS:
        archives[key][resolution] = ZooArchive(name, date or DEFAULT_DATE, extracted or name,
                                               ms, mean_ap)
    return {key: ZooModel(key, display, outputs, style, MappingProxyType(archives[key]))
            for key, display, outputs, style in _ARCHITECTURES}


MODELS: Mapping[str, ZooModel] = MappingProxyType(_build())


def keys() -> list[str]:
    """Every zoo model key, in the public table's order of first appearance."""
    return list(MODELS)


def get(key: str) -> ZooModel:
    """The zoo model ``key``; raises :class:`UnknownZooEntry` (a KeyError) listing valid keys."""
    try:
        return MODELS[key]
    except KeyError:
        raise UnknownZooEntry(
            f"unknown zoo model {key!r}; valid: {', '.join(MODELS)}") from None


def archive_url(archive: ZooArchive, base_url: str = ZOO_BASE_URL) -> str:
    """``<base_url>/<DATE>/<archive>.tar.gz`` (the zoo's own URL with the default base)."""
    return f"{base_url.rstrip('/')}/{archive.date}/{archive.file_name}"


def public_table_rows() -> list[tuple[str, str]]:
    """The public table's 41 rows as (model key, resolution), in the table's order."""
    return [(key, resolution) for key, resolution, *_ in _ROWS]


def row_name(key: str, resolution: str) -> str:
    """The ``conf/row`` option of one table row, e.g. ``efficientdet_d0_512x512``."""
    return f"{key}_{resolution}"
