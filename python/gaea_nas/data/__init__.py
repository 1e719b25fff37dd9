"""gaea_nas.data: dataset loading (CIFAR-10/100, ImageNet16-120, image folders), a disk cache
of decoded arrays, seeded, resumable, device-side batches with batched augmentation, and
streaming DataLoader-based loaders for large image folders (ImageNet).

    ds = load_dataset("cifar10", root="data/")            # or a path to an image folder / tar
    w_stream, a_stream = search_streams(ds, "erm", batch_size=64, seed=0, device="cuda")
    for x, y in w_stream: xa, ya = a_stream.next_batch(); ...
"""
from .augment import BatchAugment, cutout, normalize, random_crop, random_flip
from .batches import DeviceBatches, DeviceData, mix_seed
from .cache import cache_path, cached_arrays, default_cache_dir, source_fingerprint
from .cifar import find_cifar, read_cifar
from .dataset import Dataset, channel_stats
from .errors import DatasetError
from .image_folder import FolderLoaders, image_folder_loaders, read_image_folder
from .imagenet16 import find_imagenet16, read_imagenet16
from .load import DATASET_NAMES, load_dataset
from .splits import search_streams, split_indices, subset_indices

__all__ = [
    "BatchAugment", "DATASET_NAMES", "Dataset", "DatasetError", "DeviceBatches", "DeviceData",
    "FolderLoaders", "cache_path", "cached_arrays", "channel_stats", "cutout", "default_cache_dir",
    "find_cifar", "find_imagenet16", "image_folder_loaders", "load_dataset", "mix_seed",
    "normalize", "random_crop", "random_flip", "read_cifar", "read_image_folder", "read_imagenet16",
    "search_streams", "source_fingerprint", "split_indices", "subset_indices",
]
