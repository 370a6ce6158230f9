"""`lmpipe preprocess`: the Beam pipeline that `data.format` calls for, documents
(`pipeline.preprocess.documents`) or text pairs (`pipeline.preprocess.pairs`), each into
the dataset folder contract (`pipeline.preprocess.dataset_folder`).

Example:
    >>> result = run_preprocess(load_config("pipeline_config.yaml"), ["--runner=DirectRunner"])
    >>> result.dataset_dir, result.skipped
    ('work/data/3f9c...', False)
"""

from __future__ import annotations

from pipeline.core.config import PipelineConfig
from pipeline.preprocess.dataset_folder import PreprocessResult


def dataset_dir_for(config: PipelineConfig) -> tuple[str, list, str]:
    """(dataset folder, input files, fingerprint) that `config` describes."""
    if config.data.is_pairs:
        from pipeline.preprocess.pairs import pair_dataset_dir_for

        return pair_dataset_dir_for(config)
    from pipeline.preprocess.documents import documents_dataset_dir_for

    return documents_dataset_dir_for(config)


def run_preprocess(config: PipelineConfig, beam_args: list[str] | None = None) -> PreprocessResult:
    """Preprocesses the corpus (or the pairs) of `config` unless an identical dataset exists.

    Args:
        config: the whole pipeline config (data, tokenizer, preprocess sections used).
        beam_args: Beam pipeline options (`--runner`, `--direct_num_workers`, ...).
    Raises:
        InputDataError: bad or empty input; nothing is left under the final name.
    """
    if config.data.is_pairs:
        from pipeline.preprocess.pairs import run_pairs_preprocess

        return run_pairs_preprocess(config, beam_args)
    from pipeline.preprocess.documents import run_documents_preprocess

    return run_documents_preprocess(config, beam_args)
