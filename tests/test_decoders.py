"""Decoders on hand-built models, where the right answers are known exactly."""

import itertools

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from serving.decoders.beam_search import beam_search
from serving.decoders.counter_rng import next_uniforms, row_uniform
from serving.decoders.generate import generate
from serving.decoders.sampling import in_nucleus, in_top_k, inverse_cdf, surely_in_top_k
from serving.decoders.strategies import get_strategy
from serving.knobs import Knobs

from scripted_models import BigramModel, scripted

EOS = 3


def _run(model, prompts, strategy="greedy", **knobs):
    lengths = [len(p) for p in prompts]
    ids = [p + [0] * (max(lengths) - len(p)) for p in prompts]
    out = generate(model, tf.constant(ids), tf.constant(lengths), Knobs.defaults(len(prompts), **knobs),
                   get_strategy(strategy))
    return [row[:n] for row, n in zip(out.token_ids.numpy().tolist(), out.lengths.numpy())], out


def _random_bigram(vocab=9, seed=0, sharp=2.0):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(vocab) / sharp, size=vocab)
    probs[:, :3] = 0  # <pad>, <unk>, <bos> never follow
    return BigramModel(probs / probs.sum(1, keepdims=True))


class CountingModel:
    """Counts step calls in a variable, so the loop's early stop can be seen."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = tf.Variable(0)

    def initial_state(self, batch):
        return self.inner.initial_state(batch)

    def step(self, ids, states):
        self.calls.assign_add(1)
        return self.inner.step(ids, states)


def test_greedy_exact_tokens_lengths_and_early_stop():
    model = CountingModel(scripted([0, 0, 0, 4, 5, 6, 7, EOS], vocab=8))
    tokens, out = _run(model, [[EOS, 4], [EOS, 5, 6]], max_new_tokens=10)
    assert tokens == [[5, 6, 7, EOS], [7, EOS]]
    assert out.token_ids.shape == (2, 10)  # the fixed buffer
    # prime reads 3 positions, then 4 loop steps: the loop stopped when both rows had.
    assert int(model.calls.numpy()) == 1 + 3 + 4


def test_max_and_min_new_tokens_per_row():
    model = scripted([0, 0, 0, 4, 5, 6, 7, EOS], vocab=8)
    tokens, _ = _run(model, [[EOS, 4], [EOS, 4]], max_new_tokens=[2, 10])
    assert tokens == [[5, 6], [5, 6, 7, EOS]]
    tokens, _ = _run(model, [[EOS, 6]], max_new_tokens=4, min_new_tokens=3)
    assert tokens[0][:1] == [7] and EOS not in tokens[0][:3]


def test_repetition_penalty_and_no_repeat_ngram():
    probs = np.full((6, 6), 0.0)
    probs[3] = [0, 0, 0, 0, 0.6, 0.4]
    probs[4] = [0, 0, 0, 0.1, 0.5, 0.4]  # after 4: 4 again is the best...
    probs[5] = [0, 0, 0, 0.1, 0.5, 0.4]
    model = BigramModel(probs)
    assert _run(model, [[EOS]], max_new_tokens=4)[0] == [[4, 4, 4, 4]]
    # ...unless seen tokens are penalised: log 0.5 * 2 < log 0.4 makes 5 win after 4.
    assert _run(model, [[EOS]], max_new_tokens=2, repetition_penalty=2.0)[0] == [[4, 5]]
    # No 2-gram may repeat: 4 4, then (4, 4) is banned so 5, then 4 after 5 is new, then
    # after 4 both (4, 4) and (4, 5) are taken, so only <eos> is left.
    assert _run(model, [[EOS]], max_new_tokens=5, no_repeat_ngram_size=2)[0] == [[4, 4, 5, 4, EOS]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_width_one_and_greedy_limits_agree(seed):
    model = _random_bigram(seed=seed)
    prompts = [[EOS, 4], [EOS, 7, 5, 6], [EOS]]
    greedy, _ = _run(model, prompts, max_new_tokens=6)
    for strategy, knobs in [("top_k", {"k": 1}), ("top_p", {"p": 1e-6})]:
        for s in range(5):
            assert _run(model, prompts, strategy, max_new_tokens=6, seed=s, **knobs)[0] == greedy
    beam = beam_search(model, tf.constant([p + [0] * (4 - len(p)) for p in prompts]), tf.constant([2, 4, 1]),
                       Knobs.defaults(3, max_new_tokens=6, beam_width=1, length_penalty=0.0))
    best = [row[0][:n] for row, n in zip(beam.token_ids.numpy().tolist(), beam.lengths.numpy()[:, 0])]
    assert best == greedy  # without length normalisation, which may prefer longer texts


def _exhaustive_best(probs, prompt_last, max_new, alpha):
    """Best length-normalised sequence by enumerating every sequence (ending at <eos> or max)."""
    best, best_seq = -np.inf, None
    vocab = probs.shape[0]
    for n in range(1, max_new + 1):
        for seq in itertools.product(range(3, vocab), repeat=n):
            if EOS in seq[:-1] or (n < max_new and seq[-1] != EOS):
                continue
            prev, lp = prompt_last, 0.0
            for tok in seq:
                lp += np.log(probs[prev, tok])
                prev = tok
            score = lp / ((5 + n) / 6) ** alpha
            if score > best:
                best, best_seq = score, list(seq)
    return best_seq, best


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
def test_beam_search_finds_the_exhaustive_best(alpha):
    probs = np.zeros((6, 6))
    probs[3] = [0, 0, 0, 0.05, 0.55, 0.40]
    probs[4] = [0, 0, 0, 0.30, 0.35, 0.35]
    probs[5] = [0, 0, 0, 0.90, 0.05, 0.05]
    model = BigramModel(probs)
    expected, score = _exhaustive_best(probs, EOS, max_new=4, alpha=alpha)
    out = beam_search(model, tf.constant([[EOS]]), tf.constant([1]),
                      Knobs.defaults(1, max_new_tokens=4, beam_width=6, length_penalty=alpha))
    n = int(out.lengths[0, 0])
    assert out.token_ids[0, 0, :n].numpy().tolist() == expected
    assert float(out.score[0, 0]) == pytest.approx(score, rel=1e-4)
    assert float(out.log_prob[0, 0]) == pytest.approx(
        sum(np.log(probs[a, b]) for a, b in zip([EOS] + expected, expected)), rel=1e-4)
    greedy, _ = _run(model, [[EOS]], max_new_tokens=4)
    assert greedy[0][:2] == [4, 4]  # greedy starts with the locally best token instead


def test_beam_returns_n_best_sorted_and_respects_row_widths():
    model = _random_bigram(seed=4)
    out = beam_search(model, tf.constant([[EOS], [EOS]]), tf.constant([1, 1]),
                      Knobs.defaults(2, max_new_tokens=5, beam_width=[3, 1]))
    scores = out.score.numpy()
    assert (np.diff(scores[0]) <= 1e-6).all()
    assert (scores[1, 1:] < -1e8).all() and (out.lengths.numpy()[1, 1:] == 0).all()


def test_sampled_frequencies_match_the_model():
    probs = np.zeros((8, 8))
    probs[EOS] = [0, 0, 0, 0.05, 0.4, 0.25, 0.2, 0.1]
    model = BigramModel(probs)
    n = 4000
    out = generate(model, tf.fill([n, 1], EOS), tf.ones([n], tf.int32),
                   Knobs.defaults(n, max_new_tokens=1, seed=tf.range(n, dtype=tf.int64)), get_strategy("sample"))
    first = out.token_ids.numpy()[:, 0]
    observed = np.bincount(first, minlength=8)[3:]
    _, p_value = stats.chisquare(observed, probs[EOS, 3:] * n)
    assert p_value > 0.001, observed


def test_top_k_and_top_p_stay_inside_their_sets():
    probs = np.zeros((9, 9))
    probs[EOS] = [0, 0, 0, 0.02, 0.3, 0.25, 0.2, 0.15, 0.08]
    model = BigramModel(probs)
    n = 600
    seeds = tf.range(n, dtype=tf.int64)
    top_k = generate(model, tf.fill([n, 1], EOS), tf.ones([n], tf.int32),
                     Knobs.defaults(n, max_new_tokens=1, k=3, seed=seeds), get_strategy("top_k"))
    assert set(top_k.token_ids.numpy()[:, 0]) == {4, 5, 6}
    top_p = generate(model, tf.fill([n, 1], EOS), tf.ones([n], tf.int32),
                     Knobs.defaults(n, max_new_tokens=1, p=0.7, seed=seeds), get_strategy("top_p"))
    assert set(top_p.token_ids.numpy()[:, 0]) == {4, 5, 6}  # 0.3 + 0.25 < 0.7 <= 0.75


@pytest.mark.parametrize("p,nucleus", [(0.5, [4, 5]), (0.7, [4, 5, 6])])
@pytest.mark.parametrize("refine", [False, True])
def test_top_p_samples_the_renormalised_nucleus(p, nucleus, refine):
    """Draws from the whole distribution kept when inside the nucleus, and rows whose
    draws all miss (here 20% and 6%) drawn from the nucleus itself (`refine`: by the
    histogram's slow exact path): together exactly the nucleus, renormalised."""
    probs = np.zeros((9, 9))
    probs[EOS] = [0, 0, 0, 0.02, 0.3, 0.25, 0.2, 0.15, 0.08]
    model = BigramModel(probs)
    strategy = get_strategy("top_p")
    if refine:
        strategy.bin_tokens = 1
    n = 3000
    out = generate(model, tf.fill([n, 1], EOS), tf.ones([n], tf.int32),
                   Knobs.defaults(n, max_new_tokens=1, p=p, seed=tf.range(n, dtype=tf.int64)), strategy)
    counts = np.bincount(out.token_ids.numpy()[:, 0], minlength=9)
    assert set(np.flatnonzero(counts)) == set(nucleus)
    expected = probs[EOS, nucleus] / probs[EOS, nucleus].sum() * n
    assert stats.chisquare(counts[nucleus], expected)[1] > 0.001


@pytest.mark.parametrize("k", [3, 1])
def test_top_k_samples_the_renormalised_k_most_likely(k):
    """A small k samples tf.math.top_k's values directly; k = 1 is greedy."""
    probs = np.zeros((9, 9))
    probs[EOS] = [0, 0, 0, 0.02, 0.3, 0.25, 0.2, 0.15, 0.08]
    model = BigramModel(probs)
    n = 3000
    out = generate(model, tf.fill([n, 1], EOS), tf.ones([n], tf.int32),
                   Knobs.defaults(n, max_new_tokens=1, k=k, seed=tf.range(n, dtype=tf.int64)), get_strategy("top_k"))
    counts = np.bincount(out.token_ids.numpy()[:, 0], minlength=9)
    top = [4, 5, 6][:k]
    assert set(np.flatnonzero(counts)) == set(top)
    if k > 1:
        assert stats.chisquare(counts[top], probs[EOS, top] / probs[EOS, top].sum() * n)[1] > 0.001


def test_top_k_membership_ranks_as_tf_math_top_k():
    logits = np.round(np.random.default_rng(11).normal(0, 1, (6, 500)), 1).astype(np.float32)  # many ties
    tokens = np.random.default_rng(12).integers(0, 500, size=(6, 40)).astype(np.int32)
    for k in (1, 7, 40, 499):
        _, top = tf.math.top_k(logits, k=k)
        expected = np.array([np.isin(t, row) for t, row in zip(tokens, top.numpy())])
        got = in_top_k(tf.constant(logits), tf.constant(tokens), tf.fill([6], k)).numpy()
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kind", ["flat", "peaked", "strided", "ties"])
def test_a_large_k_samples_the_renormalised_k_most_likely(kind):
    """k = 300 of 2,000 (over direct_k): draws from the tokens at or above the guessed
    threshold; "strided" puts the largest logits on the tokens the guess samples (every
    stride-th), so it is too high and the rows fall back to tf.math.top_k; "ties" puts
    ties across the k-th place, settled by id. Support exactly the 300, frequencies by
    chi-square, and one strategy with a single draw (more rows fall back) the same."""
    rng = np.random.default_rng(3)
    strategy = get_strategy("top_k")
    if kind == "strided":
        logits = _guess_too_high(1, 2_000, rng)[0]
    else:
        logits = _rows(kind, 1, 2_000, rng)[0]
    k, n = 300, 6_000
    assert k > strategy.direct_k
    top = tf.math.top_k(logits, k=k).indices.numpy()
    probs = np.exp(logits[top].astype(np.float64) - logits[top].max())
    u = row_uniform(tf.range(n, dtype=tf.int64), tf.constant(0))
    one_draw = get_strategy("top_k")
    one_draw.draws = 1
    for s in (strategy, one_draw):
        tokens = s.select(tf.constant(np.repeat(logits[None], n, axis=0)), Knobs.defaults(n, k=k), u).numpy()
        counts = np.bincount(tokens, minlength=2_000)
        assert set(np.flatnonzero(counts)) <= set(top)
        assert stats.chisquare(counts[top], probs / probs.sum() * n)[1] > 0.001


def test_a_large_k_never_picks_a_banned_token_even_beyond_the_allowed_count():
    """Bans leave -inf logits (`logits_processors`); with ~400 tokens allowed a row, k of
    200, 1,000 and the whole vocabulary (the top k then holds banned tokens) draws only
    allowed ones; and a vocabulary smaller than k x stride (200 tokens, k = 150)."""
    rng = np.random.default_rng(19)
    n, vocab = 256, 10_000
    allowed = rng.random((n, vocab)) < 0.04
    logits = np.where(allowed, rng.normal(0, 1, (n, vocab)), -np.inf).astype(np.float32)
    u = row_uniform(tf.range(n, dtype=tf.int64), tf.constant(0))
    strategy = get_strategy("top_k")
    for k in (200, 1_000, vocab):
        tokens = strategy.select(tf.constant(logits), Knobs.defaults(n, k=k), u).numpy()
        assert allowed[np.arange(n), tokens].all()
    small = rng.normal(0, 1, (n, 200)).astype(np.float32)
    tokens = strategy.select(tf.constant(small), Knobs.defaults(n, k=150), u).numpy()
    top = tf.math.top_k(small, k=150).indices.numpy()
    assert all(t in row for t, row in zip(tokens, top))


def test_surely_in_top_k_never_claims_a_token_outside():
    logits = np.round(np.random.default_rng(13).normal(0, 1, (6, 500)), 1).astype(np.float32)  # many ties
    tokens = np.random.default_rng(14).integers(0, 500, size=(6, 40)).astype(np.int32)
    distinct = np.random.default_rng(15).normal(0, 1, (6, 500)).astype(np.float32)
    for k in (1, 7, 40, 499):
        for rows in (logits, distinct):
            exact = in_top_k(tf.constant(rows), tf.constant(tokens), tf.fill([6], k)).numpy()
            sure = np.stack([surely_in_top_k(tf.constant(rows), tf.constant(tokens[:, a]), tf.fill([6], k)).numpy()
                             for a in range(40)], axis=1)
            assert not (sure & ~exact).any()
            if rows is distinct:
                np.testing.assert_array_equal(sure, exact)  # without ties counting is exact


@pytest.mark.parametrize("kind", ["flat", "peaked", "ties"])
def test_nucleus_membership_of_many_draws_is_the_exact_nucleus(kind):
    probs = tf.nn.softmax(_rows(kind, 6, 2_000, np.random.default_rng(8)))
    tokens = tf.constant(np.random.default_rng(9).integers(3, 2_000, size=(6, 50)), tf.int32)
    for p in (0.3, 0.9, 0.999):
        got = in_nucleus(probs, tokens, tf.fill([6], p)).numpy()
        for row, ids, inside in zip(probs.numpy(), tokens.numpy(), got):
            expected, margin = _nucleus(row, p)
            if margin > 2e-6:
                np.testing.assert_array_equal(inside, expected[ids])
        np.testing.assert_array_equal(in_nucleus(probs, tokens[:, 0], tf.fill([6], p)).numpy(), got[:, 0])
    assert in_nucleus(probs, tokens, tf.fill([6], 1.0)).numpy().all()


def test_inverse_cdf_of_several_numbers_per_row_is_each_number_alone():
    probs = tf.nn.softmax(_rows("peaked", 5, 1_013, np.random.default_rng(10)))
    u = tf.reshape(row_uniform(tf.range(15, dtype=tf.int64), tf.constant(0)), [5, 3])
    together = inverse_cdf(probs, u).numpy()
    assert together.shape == (5, 3)
    for a in range(3):
        np.testing.assert_array_equal(together[:, a], inverse_cdf(probs, u[:, a]).numpy())


@pytest.mark.parametrize("strategy", ["sample", "top_k", "top_p"])
def test_seeds_reproduce_and_differ(strategy):
    model = _random_bigram(seed=5, sharp=0.5)
    a, _ = _run(model, [[EOS]] * 3, strategy, max_new_tokens=12, seed=[1, 1, 2], k=5, p=0.95)
    b, _ = _run(model, [[EOS]] * 3, strategy, max_new_tokens=12, seed=[1, 1, 2], k=5, p=0.95)
    assert a == b and a[0] == a[1] and a[0] != a[2]


@pytest.mark.parametrize("strategy", ["greedy", "sample", "top_k", "top_p", "beam"])
def test_batch_of_different_lengths_equals_each_prompt_alone(strategy):
    model = _random_bigram(seed=6)
    prompts = [[EOS, 4, 5], [EOS], [EOS, 8, 7, 6, 5]]
    seeds = [11, 12, 13]
    if strategy == "beam":
        def run(ps, ss):
            lengths = [len(p) for p in ps]
            ids = [p + [0] * (max(lengths) - len(p)) for p in ps]
            out = beam_search(model, tf.constant(ids), tf.constant(lengths),
                              Knobs.defaults(len(ps), max_new_tokens=6, beam_width=3))
            return [row[0][:n] for row, n in zip(out.token_ids.numpy().tolist(), out.lengths.numpy()[:, 0])]
    else:
        def run(ps, ss):
            return _run(model, ps, strategy, max_new_tokens=6, seed=ss, k=4, p=0.9)[0]
    together = run(prompts, seeds)
    alone = [run([p], [s])[0] for p, s in zip(prompts, seeds)]
    assert together == alone


def test_unknown_strategy_quotes_the_name():
    with pytest.raises(ValueError, match="unknown decoding strategy 'top_q'"):
        get_strategy("top_q")


def test_special_tokens_are_never_chosen_unless_unk_is_allowed():
    """<unk> (1) is the model's best next token, <bos> (2) the second: no decoder picks
    either; top-k and top-p renormalise over what is left; `<unk>` can be let through."""
    probs = np.zeros((6, 6))
    probs[:, :] = [0.0, 0.5, 0.3, 0.05, 0.1, 0.05]
    model = BigramModel(probs)
    prompts = [[EOS]] * 2
    assert _run(model, prompts, max_new_tokens=3)[0] == [[4, 4, 4]] * 2
    for strategy in ("top_k", "top_p", "sample"):
        tokens, _ = _run(model, prompts * 50, strategy, max_new_tokens=2, seed=list(range(100)), k=2, p=0.5)
        assert {t for row in tokens for t in row} <= {3, 4, 5}, strategy
        if strategy != "sample":  # k=2 and p=0.5 over what is left: <eos> and 4 / 4 alone
            assert {t for row in tokens for t in row} <= ({3, 4} if strategy == "top_k" else {4})
    beam = beam_search(model, tf.constant(prompts), tf.constant([1, 1]),
                       Knobs.defaults(2, max_new_tokens=3, beam_width=3))
    assert not np.isin(beam.token_ids.numpy(), [1, 2]).any()
    unk_allowed = generate(model, tf.constant(prompts), tf.constant([1, 1]), Knobs.defaults(2, max_new_tokens=2),
                           get_strategy("greedy"), banned=(0, 2))
    assert unk_allowed.token_ids.numpy().tolist() == [[1, 1]] * 2


# --- The strategies against exact (float64, sorting) references, on vocabularies of
# realistic size, where the fast paths (block sums, histogram thresholds, pruned top-k) run.

def _nucleus(probs, p):
    """Exact nucleus mask of float32 probs [V] for mass p, and the margin of the decision
    (how far the boundary masses are from p; float32 sums may flip it within ~1e-6)."""
    order = np.argsort(-probs, kind="stable")
    s = probs[order].astype(np.float64)
    mass = np.cumsum(s)[np.searchsorted(-s, -s, side="right") - 1]  # mass of {q >= s[i]}
    first = int(np.argmax(mass >= p)) if (mass >= p).any() else len(s) - 1
    tau = s[first]
    above = mass[first - 1] if first > 0 and s[first - 1] > tau else None  # mass of {q > tau}
    return probs >= tau, min(mass[first] - p, np.inf if above is None else p - above)


def _inverse_cdf_ref(weights, u):
    """Exact inverse CDF (float64) of weights [V] at u; and how close u * total is to a
    boundary of the cdf (relative to the total)."""
    cdf = np.cumsum(weights.astype(np.float64))
    target = u * cdf[-1]
    j = int(np.searchsorted(cdf, target, side="left"))
    gaps = np.abs(cdf[max(j - 1, 0):j + 1] - target) / cdf[-1]
    return min(j, len(cdf) - 1), gaps.min()


def _guess_too_high(n, vocab, rng):
    """Rows whose largest logits sit on the tokens top_k's guess samples (every stride-th),
    so the guess lands above the k-th largest and the rows fall back to tf.math.top_k."""
    sampled = np.arange(vocab) % get_strategy("top_k").stride == 0
    return (np.where(sampled, 3.0, 0.0) + rng.normal(0, 0.3, (n, vocab))).astype(np.float32)


def _rows(kind, n, vocab, rng):
    if kind == "flat":  # random weights: all tokens within ~0.1 nats
        logits = rng.normal(0, 0.0117, (n, vocab))
    elif kind == "peaked":  # trained-like: Zipf prior + context, perplexity ~100
        logits = rng.normal(0, 2.34, (n, vocab)) - 1.1 * np.log1p(rng.permutation(vocab))
    elif kind == "spike":  # one dominant token over a near-flat tail: crowded histogram bins
        logits = np.where(np.arange(vocab) == 7, 10.0, 0.0) + rng.normal(0, 0.01, (n, vocab))
    else:  # "ties": few distinct values, many tokens tied at the boundary
        logits = np.round(rng.normal(0, 1, (n, vocab)), 1)
    logits[:, :3] = -1e9  # banned, as the logits processors leave them
    return logits.astype(np.float32)


@pytest.mark.parametrize("kind", ["flat", "peaked", "spike", "ties"])
@pytest.mark.parametrize("refine", [False, True])
def test_top_p_threshold_keeps_exactly_the_nucleus(kind, refine):
    """Any nucleus size (p = 0.5 .. 0.999 on flat rows keeps ~5,000 .. 9,990 of 10,000
    tokens); `refine` forces the slow exact path (every crossing bin counts as crowded)."""
    strategy = get_strategy("top_p")
    if refine:
        strategy.bin_tokens = 1
    probs = tf.nn.softmax(_rows(kind, 8, 10_000, np.random.default_rng(3)))
    checked = 0
    for p in (1e-6, 0.5, 0.9, 0.999):
        tau = strategy.threshold(probs, tf.fill([8], p)).numpy()
        for row, t in zip(probs.numpy(), tau):
            expected, margin = _nucleus(row, p)
            if margin > 2e-6:  # else float32 sums may decide either way
                checked += 1
                np.testing.assert_array_equal(row >= t, expected)
    assert checked >= 20
    tau = strategy.threshold(probs, tf.fill([8], 1.0)).numpy()
    assert (tau == 0).all()  # p = 1 keeps every token


def test_top_p_on_a_flat_distribution_at_p_0999_samples_only_the_nucleus():
    logits = _rows("flat", 1, 2_000, np.random.default_rng(4))
    probs = tf.nn.softmax(logits).numpy()[0]
    nucleus, margin = _nucleus(probs, 0.999)
    assert margin > 2e-6 and 1_900 < nucleus.sum() < 1_997
    n = 4000
    tokens = get_strategy("top_p").select(tf.repeat(logits, n, axis=0), Knobs.defaults(n, p=0.999),
                                          row_uniform(tf.range(n, dtype=tf.int64), tf.constant(0))).numpy()
    assert nucleus[tokens].all()
    assert len(set(tokens)) > 1_200  # the whole nucleus is reachable, not a head of it


@pytest.mark.parametrize("name,knobs", [("sample", {}), ("top_k", {"k": 40}), ("top_k", {"k": 300}),
                                        ("top_p", {"p": 0.9}), ("top_p", {"p": 0.999})])
def test_fast_strategies_agree_with_exact_references_token_for_token(name, knobs):
    """1,000 rows x 1,013 tokens (not a whole number of blocks), flat and peaked rows,
    one uniform per row from the counter RNG (top-p: and the numbers it derives from it):
    the same token as a float64 reference, but where the reference's target lies within
    float32 rounding of a cdf boundary (or of a nucleus boundary)."""
    rng = np.random.default_rng(5)
    logits = np.concatenate([_rows("flat", 500, 1_013, rng), _rows("peaked", 500, 1_013, rng)])
    n = len(logits)
    u = row_uniform(tf.range(n, dtype=tf.int64) * 7 + 1, tf.constant(3))
    got = get_strategy(name).select(tf.constant(logits), Knobs.defaults(n, **knobs), u).numpy()
    probs = tf.nn.softmax(logits).numpy()
    count = max(get_strategy("top_p").draws, get_strategy("top_k").draws)
    numbers = np.concatenate([u.numpy()[:, None], next_uniforms(u, count).numpy()], axis=1)
    skipped = 0
    for row, prob, uu, token in zip(logits, probs, numbers, got):
        if name == "top_k":
            expected, gap = _top_k_ref(row, prob, knobs["k"], uu)
        elif name == "sample":
            expected, gap = _inverse_cdf_ref(prob, uu[0])
        else:
            expected, gap = _top_p_ref(prob, knobs["p"], uu)
        if gap < 1e-5:
            skipped += 1
            continue
        assert token == expected
    assert skipped < n // 20


def _top_k_ref(logits, prob, k, numbers):
    """top_k's token for one row (float64) and the smallest margin on the way, as a cdf
    gap. k <= direct_k: the k largest logits (ties: the lower id first) sampled in order
    of probability at the first number. A larger k: the guess g (the r-th largest of
    every stride-th logit); when at least k logits are >= g, the first of the draws from
    the probabilities of {logit >= g} that is among the k largest; else (or when every
    draw misses) the k largest sampled at the number after the draws."""
    strategy = get_strategy("top_k")
    order = np.argsort(-logits, kind="stable")[:k]
    at, gaps = numbers[0], []
    if k > strategy.direct_k:
        share = k / strategy.stride
        sub = np.sort(logits[::strategy.stride])[::-1]
        r = min(max(int(np.ceil(share + 3 * np.sqrt(share) + 2)), 1), len(sub))
        inside = logits >= sub[r - 1]
        if inside.sum() >= k:
            for uu in numbers[:strategy.draws]:
                j, gap = _inverse_cdf_ref(np.where(inside, prob, 0.0), uu)
                gaps.append(gap)
                if j in order:
                    return j, min(gaps)
        at = numbers[strategy.draws]
    j, gap = _inverse_cdf_ref(np.exp(logits[order] - logits[order[0]]), at)
    return order[j], min(gaps + [gap])


def _top_p_ref(prob, p, numbers):
    """top_p's token for one row (float64): the first of the draws from the whole
    distribution at numbers[:-1] inside the nucleus, else the nucleus's inverse CDF at
    numbers[draws]; and the smallest margin of a decision on the way, as a cdf gap (a
    membership or nucleus boundary within 2e-6 of p, where float32 sums may decide
    either way, counts as a gap under 1e-5)."""
    draws = get_strategy("top_p").draws
    mask, margin = _nucleus(prob, p)
    gaps = []
    for uu in numbers[:draws]:
        j, gap = _inverse_cdf_ref(prob, uu)
        above = prob[prob > prob[j]].astype(np.float64).sum()
        gaps += [gap, abs(above - p) * 5]
        if mask[j]:
            return j, min(gaps)
    j, gap = _inverse_cdf_ref(np.where(mask, prob, 0.0), numbers[draws])
    return j, min(gaps + [gap, margin * 5])


def test_top_k_rows_with_small_and_large_k_sample_the_same_alone_as_together():
    """One batch mixing k (tf.math.top_k's direct draw and the superset's rejection) and
    rows of every kind, one of them falling back (its largest logits where the guess samples)."""
    rng = np.random.default_rng(17)
    strided = _guess_too_high(1, 10_000, rng)
    logits = np.concatenate([_rows("flat", 3, 10_000, rng), _rows("peaked", 3, 10_000, rng),
                             _rows("ties", 2, 10_000, rng), strided])
    n = len(logits)
    knobs = Knobs.defaults(n)._replace(k=tf.constant([40, 1000, 10_000, 129, 1000, 3, 5000, 128, 1000], tf.int32))
    u = row_uniform(tf.range(n, dtype=tf.int64), tf.constant(1))
    strategy = get_strategy("top_k")
    together = strategy.select(tf.constant(logits), knobs, u).numpy()
    alone = [int(strategy.select(tf.constant(logits[i:i + 1]), Knobs(*[k[i:i + 1] for k in knobs]), u[i:i + 1])[0])
             for i in range(n)]
    assert together.tolist() == alone
    for row, k, token in zip(logits, knobs.k.numpy(), together):
        assert token in tf.math.top_k(row, k=int(k)).indices.numpy()


@pytest.mark.parametrize("name", ["sample", "top_k", "top_p"])
def test_a_row_samples_the_same_alone_as_beside_rows_that_take_the_slow_path(name):
    """A crowded row (one spike over a flat tail, or exact ties) sends a batch's top-p
    down the refining path; the other rows still get the token they get alone."""
    rng = np.random.default_rng(7)
    logits = np.concatenate([_rows("peaked", 3, 10_000, rng), _rows("spike", 1, 10_000, rng),
                             _rows("flat", 2, 10_000, rng), np.zeros([1, 10_000], np.float32)])
    n = len(logits)
    knobs = Knobs.defaults(n, k=40, p=0.95)
    u = row_uniform(tf.range(n, dtype=tf.int64), tf.constant(0))
    strategy = get_strategy(name)
    together = strategy.select(tf.constant(logits), knobs, u).numpy()
    alone = [int(strategy.select(tf.constant(logits[i:i + 1]), Knobs(*[k[i:i + 1] for k in knobs]), u[i:i + 1])[0])
             for i in range(n)]
    assert together.tolist() == alone
