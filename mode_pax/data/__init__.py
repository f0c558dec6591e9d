"""MoDE data: pinned corpora, one SentencePiece vocabulary, seqio tasks, Pax inputs.

Build with `make data` (python -m mode_pax.data.build) into $MODE_PAX_DATA_DIR or data/build,
a TFDS data_dir holding the dataset `mode_corpus` (mode_corpus.py; configs english, sotu, code,
math) and vocab/spm.model. Then `tasks.register_tasks()` and `inputs.seqio_input_params(...)`,
or read the data directly: `tfds.load('mode_corpus/code', data_dir='data/build')`.
"""
