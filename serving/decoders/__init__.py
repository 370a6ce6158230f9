"""The decoders, all graph code that exports: the generation loop with greedy and sampling
(`generate`), beam search (`beam_search`), the token-choice strategies (`strategies`:
greedy, sample, top_k, top_p), logits processors (`logits_processors`: penalties,
temperature, bans) and the counter-based uniforms that make them reproducible
(`counter_rng`)."""
