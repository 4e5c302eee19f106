"""Stages, dataset readers, shard I/O, metrics and the CLI of the synthetic-data generator."""
