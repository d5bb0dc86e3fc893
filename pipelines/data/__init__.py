"""Datasets in and out: the public description, the private records, the held-out records.

Three things, kept apart because the privacy guarantee rests on it:

* **The public description** (:class:`DatasetInfo`: name, modality, label set and
  class names, sample shape, value range, where held-out data comes from), built by
  :func:`dataset_info` from the config and public file headers only, never from a
  private record. It is therefore the same whether any one record is present or not,
  and holds no count or size of the private set. The driver records it in the run
  directory (:meth:`DatasetInfo.to_json`); ``privevo rebuild`` reads it back
  (:meth:`DatasetInfo.from_json`) once the private files are deleted.
* **Private records** (:func:`load_private`, :func:`split_rows`, :func:`read_rows`):
  read only by voters, the embedding pass, and evaluation that the report marks as
  touching private data.
* **Held-out records** (:func:`load_heldout`): real data the config *declares*
  public (``heldout: path``, a separate source; ``heldout: split``, a hash split of
  ``path``), which evaluation uses and samples.png draws; ``heldout: none`` means
  there is none (:func:`load_heldout` returns None and the run evaluates nothing on
  held-out data). The bundled digits set keeps its fixed split (``"bundled"``).

The label set is declared (``data.class_names``) for every kind but the bundled
digits, never derived from the data: a label held by a single record would
otherwise create a class exactly when that record is present.
:func:`check_private_labels` (called by the driver before any budget is spent)
refuses a set holding a label outside the declared set, with a message that names
the file but carries no private value, row number or count (it may reach a shared
job log); the loaders refuse such a record the same way.

``heldout: split`` holds a record out iff a keyed hash of its own content falls
below ``heldout_fraction`` (:func:`record_held_out`; ``split_seed`` is the key), so
a record's side depends on that record alone: adding, removing or changing one
record never moves another between the sides (a seeded per-class permutation, as
used before, moved about a hundred). The record's content is:

* ``image_folder``: the image file's bytes;
* ``text_table``: the UTF-8 of ``text + "\\x00" + label``, the label as its string;
* ``arrays``: ``samples[i].tobytes()`` (stored dtype) followed by the label;
* ``parquet_shards``: the encoded image bytes (or the raw pixels as little-endian
  float32) followed by the label;

integer labels as 8 bytes, big-endian, signed. Splitting an image set reads every
file of the asked classes once, to hash it.

Kinds (``data.kind`` in a config):

* ``digits``: scikit-learn's bundled ``load_digits`` (1,797 8x8 images, values
  0..16, class names "0".."9"), public data, split once, stratified, with a fixed
  seed independent of any run seed, into 1,200 private-train and 597 held-out samples;
* ``image_folder``: one subfolder per declared class name, images inside; resized to
  ``image_size`` with ``channels`` 1 or 3, values 0..255. Hidden subfolders and
  non-image files are ignored; a subfolder holding images that is not a declared
  class is refused;
* ``text_table``: a CSV, TSV or parquet file with a text column and a label column,
  whose values are matched as strings (``str(value)``; a CSV column is read as
  text, so ``01`` stays ``01``) against ``class_names``;
* ``parquet_shards``: a directory of ``*.parquet`` files (read in name order, rows
  in file order), each with an integer label column (``label_column``, values
  0..C-1, C = ``len(class_names)``) and an image column (``image_column``) holding
  encoded image bytes (PNG/JPEG/... as ``binary``), a struct with a ``bytes`` field
  of encoded bytes (the layout Hugging Face ``datasets`` writes), or a list of
  numbers (raw pixels, 0..255, flattened ``H x W`` or ``H x W x C`` channels-last at
  ``image_size``/``channels``); resized like ``image_folder``;
* ``arrays``: a ``.npz`` file with ``samples``, integer ``labels`` (0..C-1) and a
  scalar ``max_value``. With ``heldout: path`` and ``heldout_path`` the same file,
  the held-out records are its ``heldout_samples``/``heldout_labels`` (how the audit
  hands each PE run its data); another held-out ``.npz`` holds ``samples``/``labels``.

Modules (this package re-exports their public names): ``declared`` (what the config
declares: label set, held-out mode, public size, label checks), ``split`` (a split's
records, the per-record held-out hash), one reader per kind (``digits``, ``images``,
``parquet_shards``, ``text_tables``, ``arrays``), ``rows`` (row sources and the
loaders), ``describe`` (the public description, the private label check) and
``synthetic`` (the synthetic set's parquet schema).
"""

from .arrays import npz_header
from .declared import (
    DIGITS_NAMES,
    DIGITS_PRIVATE,
    HELDOUT_MODES,
    IMAGE_MAX_VALUE,
    NOT_SHOWN,
    DataError,
    check_sample_values,
    class_names_of,
    heldout_mode,
    public_size,
)
from .describe import DatasetInfo, check_private_labels, dataset_info
from .digits import DIGITS_HELDOUT, DIGITS_SPLIT_SEED
from .images import IMAGE_SUFFIXES, read_image_files
from .parquet_shards import (
    check_parquet_schema,
    decode_image_values,
    parquet_files,
    read_parquet_rows,
)
from .rows import RowSource, load_heldout, load_private, read_rows, split_rows
from .split import Split, record_held_out
from .synthetic import (
    huggingface_features,
    image_png,
    read_synthetic,
    synthetic_table,
    write_parquet_atomic,
)

__all__ = [
    "DIGITS_HELDOUT", "DIGITS_NAMES", "DIGITS_PRIVATE", "DIGITS_SPLIT_SEED", "HELDOUT_MODES", "IMAGE_SUFFIXES",
    "IMAGE_MAX_VALUE", "NOT_SHOWN", "DataError", "check_sample_values", "DatasetInfo", "RowSource", "Split", "check_parquet_schema", "check_private_labels",
    "class_names_of", "dataset_info", "decode_image_values", "heldout_mode", "huggingface_features", "image_png",
    "load_heldout", "load_private", "npz_header", "parquet_files", "public_size", "read_image_files",
    "read_parquet_rows", "read_rows", "read_synthetic", "record_held_out", "split_rows", "synthetic_table",
    "write_parquet_atomic",
]
