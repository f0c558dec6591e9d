"""MoDE data: pinned corpora, one SentencePiece vocabulary, seqio tasks, Pax inputs.

Build with `make data` (python -m mode_pax.data.build); then `tasks.register_tasks()` and
`inputs.seqio_input_params(...)`. The build folder is $MODE_PAX_DATA_DIR or data/build.
"""
