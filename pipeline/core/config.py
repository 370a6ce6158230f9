"""The typed schema of `pipeline_config.yaml`: one section per stage.

Every section rejects unknown keys, so a typo stops the run with the key's name. Read it
with `pipeline.core.config_loader.load_config`, never by hand.

Example:
    >>> cfg = PipelineConfig.model_validate({"tokenizer": {"kind": "char"}})
    >>> cfg.tokenizer.kind, cfg.tokenizer.max_vocab
    ('char', 10000)
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Globs = list[str]
PAIR_FORMATS = ("pairs", "pairs_tsv", "pairs_jsonl")
_SIDES = ("source", "target")
_SPLITS = ("train", "valid", "test")
_BUILTIN_DEFAULT = "builtin:python-docs"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """`data:` the corpus (or text pairs), its format and its split. Example:
    `DataConfig(train=["corpus/*.txt"], format="lines").valid_fraction` -> 0.1."""

    # File globs (or a list of them). `builtin:python-docs` is the demo corpus.
    train: Globs = Field(default_factory=lambda: ["builtin:python-docs"])
    # Empty: split documents of `train` by a stable hash with the fractions below.
    valid: Globs = Field(default_factory=list)
    test: Globs = Field(default_factory=list)
    valid_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    # text: one document per file, each line a sentence; lines: each line a document;
    # jsonl: each line a JSON object whose `text_field` holds a document.
    # Pairs of texts (sequence-to-sequence): pairs: line-aligned files, line n of a
    # source file pairs with line n of its target file (the source_*/target_* globs
    # below); pairs_tsv: one tab-separated pair a line, pairs_jsonl: one JSON object a
    # line, both in the files of train/valid/test.
    format: Literal["text", "lines", "jsonl", "pairs", "pairs_tsv", "pairs_jsonl"] = "text"
    text_field: str = Field("text", min_length=1)
    # pairs: globs of each side; the k-th source file (sorted) pairs with the k-th target
    # file. Empty valid/test: hash split of the train pairs, as for documents.
    source_train: Globs = Field(default_factory=list)
    target_train: Globs = Field(default_factory=list)
    source_valid: Globs = Field(default_factory=list)
    target_valid: Globs = Field(default_factory=list)
    source_test: Globs = Field(default_factory=list)
    target_test: Globs = Field(default_factory=list)
    # pairs_tsv: a column index (0-based, no header line) or a column name (then the
    # first line of every file is a header); pairs_jsonl: a field name. Unset: columns
    # 0 and 1 (pairs_tsv), fields "source" and "target" (pairs_jsonl).
    source_field: int | str | None = None
    target_field: int | str | None = None

    @field_validator(
        "train", "valid", "test", *(f"{side}_{split}" for side in _SIDES for split in _SPLITS),
        mode="before")
    @classmethod
    def _one_glob_or_many(cls, value: object) -> object:
        if value is None:
            return []
        if isinstance(value, str):
            return [value] if value.strip() else []
        return value

    @property
    def is_pairs(self) -> bool:
        """True for the formats of text pairs (sequence-to-sequence data)."""
        return self.format in PAIR_FORMATS

    def has_own(self, split: str) -> bool:
        """Whether `split` (valid or test) has files of its own, or is hashed from train."""
        return bool(getattr(self, f"source_{split}" if self.format == "pairs" else split))

    def pair_fields(self) -> tuple[int | str, int | str]:
        """(source, target) column or field of pairs_tsv / pairs_jsonl, defaults applied."""
        default = (0, 1) if self.format == "pairs_tsv" else ("source", "target")
        return (
            default[0] if self.source_field is None else self.source_field,
            default[1] if self.target_field is None else self.target_field,
        )

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> "DataConfig":
        total = (0.0 if self.has_own("valid") else self.valid_fraction) + (
            0.0 if self.has_own("test") else self.test_fraction
        )
        if total >= 1.0:
            raise ValueError(
                f"valid_fraction + test_fraction = {total:g} leaves no training data; "
                "allowed: a sum below 1"
            )
        if self.format == "pairs":
            self._check_pair_globs()
        elif not self.train:
            raise ValueError("data.train is empty; give at least one file glob")
        else:
            self._check_no_pair_globs()
        self._check_pair_fields()
        return self

    def _check_pair_globs(self) -> None:
        if not self.source_train or not self.target_train:
            raise ValueError(
                "data.format: pairs needs data.source_train and data.target_train "
                "(globs of line-aligned source and target files)")
        for split in _SPLITS[1:]:
            source, target = getattr(self, f"source_{split}"), getattr(self, f"target_{split}")
            if bool(source) != bool(target):
                given, missing = ("source", "target") if source else ("target", "source")
                raise ValueError(
                    f"data.{given}_{split} is set but data.{missing}_{split} is empty; "
                    f"give both sides of the {split} pairs, or neither (hash split of train)")
        for split in _SPLITS:
            value = getattr(self, split)
            if value and not (split == "train" and value == [_BUILTIN_DEFAULT]):
                raise ValueError(
                    f"data.{split} is not read with data.format: pairs; give "
                    f"data.source_{split} and data.target_{split} instead")

    def _check_no_pair_globs(self) -> None:
        for side in _SIDES:
            for split in _SPLITS:
                if getattr(self, f"{side}_{split}"):
                    raise ValueError(
                        f"data.{side}_{split} is read only with data.format: pairs "
                        f"(format is {self.format!r})")
        if self.is_pairs and any(g.startswith("builtin:") for g in self.train):
            raise ValueError(
                f"data.format: {self.format} reads pairs, but data.train is the built-in "
                "demo corpus (plain text); point data.train at your pair files")

    def _check_pair_fields(self) -> None:
        fields = (self.source_field, self.target_field)
        if self.format not in ("pairs_tsv", "pairs_jsonl"):
            if any(f is not None for f in fields):
                raise ValueError(
                    "data.source_field / data.target_field are read only with "
                    f"data.format: pairs_tsv or pairs_jsonl (format is {self.format!r})")
            return
        for side, field in zip(_SIDES, fields):
            if isinstance(field, int) and (field < 0 or self.format == "pairs_jsonl"):
                need = ("a field name" if self.format == "pairs_jsonl"
                        else "a column index >= 0 or a header name")
                raise ValueError(f"data.{side}_field = {field!r}: {self.format} needs {need}")
            if isinstance(field, str) and not field:
                raise ValueError(f"data.{side}_field is an empty name")
        source, target = self.pair_fields()
        if source == target:
            raise ValueError(
                f"data.source_field and data.target_field are both {source!r}; "
                "a pair needs two different columns or fields")


class TokenizerConfig(_Section):
    """`tokenizer:` word, char or subword (WordPiece) pieces and the learned vocabulary.
    Example: `TokenizerConfig(kind="char").max_vocab` -> 10000."""

    kind: Literal["word", "char", "subword"] = "word"
    lowercase: bool = True
    # Learned entries, not counting the reserved <pad> <unk> <bos> <eos>.
    max_vocab: int = Field(10000, ge=1)
    min_count: int = Field(1, ge=1)
    add_eos: bool = True  # append <eos> at each line end
    max_chars_per_word: int = Field(100, ge=1)  # subword: longer words become <unk>
    # Pair formats: one vocabulary learned from both sides (vocab.txt, tokenizer.json),
    # or one per side (source_vocab.txt + source_tokenizer.json, target_vocab.txt +
    # target_tokenizer.json), each of up to max_vocab learned entries.
    shared_vocab: bool = True


class PreprocessConfig(_Section):
    """`preprocess:` where the dataset folders go and how the Beam pipeline reads and batches.
    Example: `PreprocessConfig().output_dir` -> "work/data"."""

    output_dir: str = "work/data"  # one sub-folder per dataset fingerprint
    num_shards: int = Field(0, ge=0)  # 0: one shard per bundle (no shuffle), as the runner decides
    drop_empty_lines: bool = True
    max_line_chars: int = Field(1_000_000, ge=1000)  # longer lines are cut at whitespace (pairs: skipped)
    max_lines_per_record: int = Field(1000, ge=1)  # `text` documents are stored in parts
    batch_lines: int = Field(1024, ge=1)  # lines per tokenizer call
    # Pair formats: a pair whose source or target has more tokens than this (<eos> not
    # counted) is skipped and counted in stats.json, never truncated. 0: no limit.
    max_pair_tokens: int = Field(0, ge=0)


class ModelConfig(_Section):
    """`model:` the LSTM (or RNN) language model, or the attention seq2seq model (`kind`).
    Example: `ModelConfig().hidden_dim` -> 200 (Zaremba's small shape with tied embeddings)."""

    cell: Literal["lstm", "rnn"] = "lstm"
    embedding_dim: int = Field(200, ge=1)
    hidden_dim: int = Field(200, ge=1)
    num_layers: int = Field(2, ge=1)
    dropout: float = Field(0.3, ge=0.0, lt=1.0)
    recurrent_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # lm: DropConnect on each layer's recurrent kernel U (one mask per batch window,
    # stateless and seeded; decoding and the export use U unmasked; Merity et al. 2017)
    weight_drop: float = Field(0.0, ge=0.0, lt=1.0)
    # lm: drops whole words of the vocabulary from the input embedding, scaled (Gal & Ghahramani)
    embedding_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    tie_embeddings: bool = True  # seq2seq: the target embedding and the output layer
    # lm: a language model over one text stream; seq2seq: an LSTM encoder-decoder with
    # attention over pairs of texts (num_layers then counts the decoder's layers). The
    # keys below apply to seq2seq only.
    kind: Literal["lm", "seq2seq"] = "lm"
    encoder_layers: int = Field(0, ge=0)  # 0: as many as num_layers
    bidirectional_encoder: bool = False  # a backward LSTM beside each forward one
    attention: Literal["luong", "bahdanau"] = "luong"  # multiplicative | additive
    attention_score: Literal["general", "dot"] = "general"  # luong: h_t W h_s | h_t . h_s
    input_feeding: bool = True  # the last attentional vector joins the next input

    @model_validator(mode="after")
    def _seq2seq_fits_together(self) -> "ModelConfig":
        if self.kind != "seq2seq":
            return self
        if self.cell != "lstm":
            raise ValueError(f"model.kind seq2seq has LSTM layers only; got model.cell {self.cell!r}, "
                             "set model.cell: lstm")
        if self.attention == "luong" and self.attention_score == "dot" and self.bidirectional_encoder:
            raise ValueError("model.attention_score dot needs encoder outputs of the decoder's size, but a "
                             "bidirectional encoder doubles them; use attention_score: general")
        return self


class TrainConfig(_Section):
    """`train:` truncated BPTT windows, optimiser and schedule, precision, distribution.
    Example: `TrainConfig(epochs=2).bptt` -> 35."""

    output_dir: str = "work/train"
    batch_size: int = Field(20, ge=1)
    bptt: int = Field(35, ge=1)
    epochs: int = Field(8, ge=1)
    # nt_asgd: SGD, switched to averaged SGD when valid perplexity has not improved on the
    # best of `nonmono` epochs before (Merity et al. 2017); evaluation, the model folder
    # and the export use the averaged weights
    optimizer: Literal["sgd", "adam", "nt_asgd"] = "sgd"
    nonmono: int = Field(5, ge=1)
    learning_rate: float = Field(1.0, gt=0.0)
    lr_decay: float = Field(0.5, gt=0.0, le=1.0)
    lr_decay_start_epoch: int = Field(5, ge=1)  # first (1-based) epoch with decay
    # epoch: x lr_decay every epoch from lr_decay_start_epoch (Zaremba et al.); plateau: x
    # lr_decay after an epoch whose valid perplexity did not improve on the best (PyTorch's
    # word_language_model: lr / 4), from lr_decay_start_epoch on
    lr_schedule: Literal["epoch", "plateau"] = "epoch"
    clip_norm: float = Field(5.0, gt=0.0)
    # AR and TAR (Merity et al. 2017) on the last layer's outputs, added to the per-token
    # loss: activation_penalty * mean(dropped h^2) + temporal_penalty * mean((h_t - h_{t-1})^2)
    activation_penalty: float = Field(0.0, ge=0.0)
    temporal_penalty: float = Field(0.0, ge=0.0)
    init_scale: float = Field(0.1, gt=0.0)
    checkpoint_every: int = Field(0, ge=0)  # steps; 0: only at epoch ends
    early_stopping_patience: int = Field(0, ge=0)  # epochs; 0: off
    # mixed_bfloat16: bfloat16 matmuls (pays on AMX CPUs and GPUs); mixed_float16: float16
    # matmuls with dynamic loss scaling (GPUs). States, gate math and loss stay float32.
    precision: Literal["float32", "mixed_bfloat16", "mixed_float16"] = "float32"
    # none: one process; mirrored: every local GPU (or the CPU) of this machine;
    # multi_worker: the cluster of the TF_CONFIG environment variable. batch_size is per
    # replica: the global batch is replicas x batch_size.
    distribute: Literal["none", "mirrored", "multi_worker"] = "none"
    seed: int = 0
    # champion: start from the registry champion's weights when the vocabulary and model
    # shape are unchanged (lmpipe run says why not otherwise).
    warm_start: Literal["none", "champion"] = "none"


class TrackingConfig(_Section):
    """`tracking:` the MLflow tracking URI, experiment, registered model and system metrics.
    Example: `TrackingConfig().registered_model` -> "lmpipe-lm"."""

    uri: str = "sqlite:///work/mlflow.db"
    experiment: str = Field("lmpipe", min_length=1)
    registered_model: str = Field("lmpipe-lm", min_length=1)
    system_metrics: bool = True  # MLflow's system metrics (CPU, memory, disk) during training
    system_metrics_interval_s: float = Field(10.0, gt=0)  # seconds between samples


class ExportConfig(_Section):
    """`export:` the TF Serving base path and model name, the default signature and limits.
    Example: `ExportConfig().default_signature` -> "top_p"."""

    base_path: str = "work/export"
    model_name: str = Field("lm", pattern=r"^[A-Za-z0-9_.-]+$")
    default_signature: Literal["greedy", "beam_search", "sample", "top_k", "top_p"] = "top_p"
    max_new_tokens: int = Field(256, ge=1)  # cap on a request's max_new_tokens
    max_prompt_tokens: int = Field(1024, ge=1)  # a longer prompt (seq2seq: source) is refused
    allow_unk: bool = False  # let the decoders choose <unk> (by default they never do)
    keep_versions: int = Field(5, ge=1)


class BatchingConfig(_Section):
    """TF Serving's batching parameters (`--enable_batching`), same names and meanings."""

    enabled: bool = False
    max_batch_size: int = Field(64, ge=1)  # rows of one merged batch
    batch_timeout_micros: int = Field(1000, ge=0)  # how long a batch waits to fill
    max_enqueued_batches: int = Field(100, ge=1)  # beyond it: 503 UNAVAILABLE at once
    num_batch_threads: int = Field(2, ge=1)  # batches run at once
    allowed_batch_sizes: list[int] = Field(default_factory=list)  # pad batches up to these
    pad_variable_length_inputs: bool = False

    @model_validator(mode="after")
    def _sizes_end_at_max(self) -> "BatchingConfig":
        sizes = self.allowed_batch_sizes
        if sizes and (sizes != sorted(set(sizes)) or sizes[-1] != self.max_batch_size):
            raise ValueError(f"allowed_batch_sizes must increase and end at max_batch_size "
                             f"({self.max_batch_size}), as TF Serving requires; got {sizes}")
        return self


class ServeConfig(_Section):
    """`serve:` `lmpipe serve`'s ports, request limits and batching.
    Example: `ServeConfig().grpc_port` -> 8500."""

    host: str = "127.0.0.1"
    port: int = Field(8501, ge=1, le=65535)
    grpc_port: int = Field(8500, ge=0, le=65535)  # TF Serving's gRPC API; 0: off
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    max_batch_size: int = Field(64, ge=1)
    max_request_bytes: int = Field(8 * 2**20, ge=1024)  # a larger body is refused (413)
    compute_budget: int = Field(65_536, ge=1)  # prompts x beam width x max new tokens per request
    max_concurrent_predictions: int = Field(2, ge=1)  # graph runs at once; more requests wait


class PromoteConfig(_Section):
    """`promote:` when a new model becomes the champion, and canaries.
    Example: `PromoteConfig().min_improvement` -> 0.0."""

    # A new model becomes champion only if its test perplexity is below
    # champion_ppl * (1 - min_improvement) (seq2seq: its greedy test BLEU above
    # champion_bleu * (1 + min_improvement)), both measured on the same test data.
    min_improvement: float = Field(0.0, ge=0.0, lt=1.0)
    canary: bool = False  # also serve the latest challenger under the `canary` label


class RunConfig(_Section):
    """`run:` where `lmpipe run` keeps its manifests, lock and log, and whether it reports.
    Example: `RunConfig().work_dir` -> "work/runs"."""

    work_dir: str = "work/runs"  # run manifests and the lock of `lmpipe run`
    log_file: str = "work/runs/lmpipe-run.log"  # where scheduled runs append their output
    reports: bool = True  # attach the decoding report to every newly trained model


class PipelineConfig(_Section):
    """The whole config: one section per stage."""

    data: DataConfig = Field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    promote: PromoteConfig = Field(default_factory=PromoteConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _model_fits_data(self) -> "PipelineConfig":
        # (pairs with model.kind lm may be preprocessed; training them says what to set)
        if self.model.kind == "seq2seq" and not self.data.format.startswith("pairs"):
            raise ValueError(f"model.kind seq2seq learns from pairs of texts; set data.format to pairs, "
                             f"pairs_tsv or pairs_jsonl (it is {self.data.format})")
        lm_only = {"model.weight_drop": self.model.weight_drop, "model.embedding_dropout": self.model.embedding_dropout,
                   "train.activation_penalty": self.train.activation_penalty,
                   "train.temporal_penalty": self.train.temporal_penalty}
        set_keys = [k for k, v in lm_only.items() if v]
        if self.model.kind == "seq2seq" and set_keys:
            raise ValueError(f"{', '.join(set_keys)} apply to language models (model.kind lm) only; "
                             "set them to 0 for model.kind seq2seq")
        return self
