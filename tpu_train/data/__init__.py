"""Data pipeline for tpu_train: program data, tokenizer, TFDS builders and SeqIO tasks.

Importing this package is cheap: TensorFlow, TFDS and SeqIO are imported only by the modules that
need them (`builders`, `tasks`, `pipeline`, `inspect`).
"""
