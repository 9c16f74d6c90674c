"""Data: Criteo preprocessing, MovieLens-100k, planted synthetic data, and one Dataset interface."""

from compemb.data.batch import Batch
from compemb.data.criteo import CRITEO_KAGGLE_CARDINALITIES
from compemb.data.dataset import ArrayDataset, Dataset, SplitArrays, load_dataset_folder
from compemb.data.movielens import load_movielens_100k
from compemb.data.preprocess import PreprocessOptions, PreprocessSummary, preprocess_criteo
from compemb.data.sources import open_dataset
from compemb.data.synthetic import SynthOptions, generate_synthetic

__all__ = [
    "CRITEO_KAGGLE_CARDINALITIES",
    "ArrayDataset",
    "Batch",
    "Dataset",
    "PreprocessOptions",
    "PreprocessSummary",
    "SplitArrays",
    "SynthOptions",
    "generate_synthetic",
    "load_dataset_folder",
    "load_movielens_100k",
    "open_dataset",
    "preprocess_criteo",
]
