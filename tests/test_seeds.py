"""The seed derivations of spat.utils.rng keep the numbers every recorded run was trained and
tested with (values pinned from the implementation before it moved out of the training loop)."""

from __future__ import annotations

from spat.utils.rng import (
    FINAL_TEST_OFFSET,
    STREAM_DATA,
    STREAM_RANK,
    STREAM_VAL,
    derive_seed,
    final_test_seed,
    rank_seed,
)


def test_derive_seed_is_fnv1a_over_64_bit_words() -> None:
    assert derive_seed() == 1469598103934665603  # the FNV-1a offset basis (below 2**63)
    assert derive_seed(1) == 4953162257141659110
    assert derive_seed(-1) == 4270207580689860276  # two's complement, not an error
    assert derive_seed(0, 3, STREAM_DATA) == 2974535535186753373
    assert all(0 <= derive_seed(s, e) < 2**63 for s in (0, 1, 2**70) for e in range(3))


def test_a_name_is_its_length_then_its_utf8_bytes() -> None:
    """String parts (evaluation attack keys) fold in as words: len, then each byte; so a name
    split differently, or a name and the integers of its bytes, give other seeds."""
    assert derive_seed(0, "ab") == derive_seed(0, 2, ord("a"), ord("b")) == 4710194153782952582
    assert derive_seed(0, "a", "b") == 5179452639549122932
    assert derive_seed(0, "pgd20") == 8406043084812631669
    assert derive_seed(0, "pgd20") != derive_seed(1, "pgd20") != derive_seed(0, "pgd100")


def test_evaluation_seeds_come_from_derive_seed() -> None:
    """One seed scheme: an evaluation's attack, batch and ε-sweep seeds are derive_seed's."""
    from spat.evaluation.seeding import attack_seed, sweep_seed
    from spat.utils.rng import batch_seed

    assert attack_seed(7, "cw20") == derive_seed(7, "cw20")
    # the per-batch rule is training's validation's: the stream seed for batch 0, then derived
    assert batch_seed(attack_seed(7, "cw20"), 0) == attack_seed(7, "cw20")
    assert batch_seed(attack_seed(7, "cw20"), 3) == derive_seed(derive_seed(7, "cw20"), 3)
    assert sweep_seed(7, 2) == derive_seed(7, "sanity-eps", 2)
    assert len({batch_seed(attack_seed(0, k), b) for k in ("pgd20", "cw20") for b in range(50)
                }) == 100


def test_rank_and_stream_seeds() -> None:
    assert (STREAM_RANK, STREAM_DATA, STREAM_VAL) == (0, 1, 4)
    assert rank_seed(0, 3, 0) == derive_seed(0, 3, STREAM_RANK) == 2974534435675125162
    assert rank_seed(0, 3, 2) == derive_seed(0, 3, STREAM_RANK, 2) == 4178706725526449272
    seeds = {rank_seed(5, 1, r) for r in range(8)} | {derive_seed(5, 1, STREAM_DATA),
                                                      derive_seed(5, 1, STREAM_VAL)}
    assert len(seeds) == 10  # no rank's stream coincides with another or with data/validation


def test_final_test_seed_is_the_recorded_offset() -> None:
    assert FINAL_TEST_OFFSET == 12345
    assert final_test_seed(0) == 12345 and final_test_seed(7) == 12352
