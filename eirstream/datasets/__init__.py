"""`--dataset SPEC`: a dataset on disk or behind an fsspec URL, described by a
small YAML file, served as a sample source.

spec.py reads the YAML; source.py reads the files and serves their rows.
"""
