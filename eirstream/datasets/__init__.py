"""`--dataset SPEC`: a dataset on disk or behind an fsspec URL, described by a
small YAML file, served as a sample source.

Its modules, each importing only those above it:

* spec.py: the YAML spec, its keys and entries (`load_spec`, `DatasetProblem`);
* files.py: finding the data files (fsspec) and reading them a block at a time;
* values.py: one entry of one row encoded for EIR, and Arrow type checks;
* words.py: word chunks of a document, and their JSON through one template;
* index.py: counting blocks and word chunks, the disk cache, `DatasetIndex`;
* source.py: `DatasetSource`, the sample source `--dataset` serves.
"""
