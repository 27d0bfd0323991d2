"""rnnfast.data: the textbook's (d2l) text pipeline.

text -> lines (``read_text``) -> tokens (``tokenize``) -> ``Vocab`` -> one int64 tensor of ids
(``load_corpus``) -> minibatches (``seq_data_iter_random`` / ``seq_data_iter_sequential`` /
``SeqDataLoader``); ``load_data_time_machine`` does it all for the bundled Time Machine.
Bundled corpora: 'timemachine' (the d2l file) and 'war_of_the_worlds' (held-out text).
"""
from . import sampling, stats, text
from .sampling import (
    SeqDataLoader,
    load_data,
    load_data_time_machine,
    seq_data_iter_random,
    seq_data_iter_sequential,
)
from .stats import corpus_stats, format_stats, ngram_freqs, zipf_plot
from .text import (
    BUNDLED_CORPORA,
    Vocab,
    corpus_path,
    load_corpus,
    load_corpus_time_machine,
    read_text,
    read_time_machine,
    tokenize,
)

__all__ = text.__all__ + sampling.__all__ + stats.__all__
