"""Datasets (ADE20K, Cityscapes, VOC, folder, synthetic shapes), their transforms and the dataset factory."""

from segkn.data.ade20k import ADE20KDataset
from segkn.data.base import IGNORE_INDEX, Sample, SegmentationDataset, default_palette
from segkn.data.cityscapes import CityscapesDataset, label_ids_to_train_ids, train_ids_to_label_ids
from segkn.data.errors import DatasetError
from segkn.data.folder import FolderDataset, read_classes_file
from segkn.data.io import read_image, read_mask
from segkn.data.registry import DATASETS, build_dataset, data_settings
from segkn.data.shapes import ShapesDataset
from segkn.data.transforms import CatMaxRatioCrop, SegTransform, build_transform, image_to_tensor
from segkn.data.voc import VOCDataset

__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "ADE20KDataset",
    "CatMaxRatioCrop",
    "CityscapesDataset",
    "DatasetError",
    "FolderDataset",
    "Sample",
    "SegTransform",
    "SegmentationDataset",
    "ShapesDataset",
    "VOCDataset",
    "build_dataset",
    "build_transform",
    "data_settings",
    "default_palette",
    "image_to_tensor",
    "label_ids_to_train_ids",
    "read_classes_file",
    "read_image",
    "read_mask",
    "train_ids_to_label_ids",
]
