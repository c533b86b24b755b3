"""tutorial_lib.compute: gradient-evaluation counts against hand counts."""

import pytest

import tutorial_lib as tl

A = tl.attacks
C = tl.compute


def pgd(steps=3):
    return A.PGD(eps=0.1, steps=steps, step_size=0.25 / steps, random_start=True)


def test_attack_costs():
    assert C.attack_cost(A.FGSM(eps=0.1)) == 1.0
    assert C.attack_cost(pgd(7)) == 7.0
    assert C.attack_cost(A.SparseL1Descent(eps=8.0, steps=5, step_size=1.0)) == 5.0
    rotation = A.Rotation(max_angle=20, angle_steps=7)
    assert rotation.grid_points == 7
    assert C.attack_cost(rotation) == pytest.approx(7 * C.FORWARD_COST)


def test_pool_cost_is_the_expectation_over_draws():
    pool = A.AttackPool([pgd(3), A.Rotation(max_angle=20, angle_steps=7)], weights=[3, 1])
    assert C.pool_cost(pool) == pytest.approx(0.75 * 3 + 0.25 * 7 / 3)
    assert C.attack_cost(pool) == C.pool_cost(pool)


def test_meta_step_costs_match_hand_counts():
    ns, nq, b = 25, 75, 4
    maml = tl.meta.MAML(tl.models.few_shot_cnn(5), inner_steps=2)
    assert C.meta_step_cost(maml, n_support=ns, n_query=nq, meta_batch=b) == b * (2 * ns * (1 + C.HVP_COST) + nq)
    fo = tl.meta.MAML(tl.models.few_shot_cnn(5), inner_steps=2, first_order=True)
    assert C.meta_step_cost(fo, n_support=ns, n_query=nq, meta_batch=b) == b * (2 * ns + nq)
    aq = tl.meta_adversarial.AdversarialQuerying(tl.models.few_shot_cnn(5), attack=pgd(3), inner_lr=0.4,
                                                 inner_steps=1, clean_weight=0.2)
    # inner: 1 step x 25 clean support x (1 + HVP); outer: 75 queries x (PGD-3 + 1) + 75 clean queries
    assert C.meta_step_cost(aq, n_support=ns, n_query=nq, meta_batch=b) == b * (ns * 3 + nq * 4 + nq)
    ours = tl.meta_adversarial.AttackAdaptiveMAML(tl.models.few_shot_cnn(5), pool=pgd(3), inner_steps=3)
    # each inner step: PGD-3 on 25 support images, then a gradient (+HVP) on 50 (clean + attacked)
    assert C.meta_step_cost(ours, n_support=ns, n_query=nq, meta_batch=b) == b * (3 * (25 * 3 + 50 * 3) + 75 * 4)


def test_meta_step_costs_of_adml_trades_and_attacked_support():
    ns, nq, b = 25, 75, 2
    mad = tl.meta_adversarial
    adml = mad.ADML(tl.models.few_shot_cnn(5), attack=pgd(3), inner_lr=0.4, inner_steps=1)
    # support attack vs one clean step (25 x (1 + 3)), two inner loops (2 x 25 x 3), query attack (75 x 3), two losses
    assert C.meta_step_cost(adml, n_support=ns, n_query=nq, meta_batch=b) == b * (25 * 4 + 2 * 25 * 3 + 75 * 3 + 150)
    trades = mad.AdversarialQuerying(tl.models.few_shot_cnn(5), attack=pgd(3), inner_lr=0.4, inner_steps=1,
                                     outer_loss="trades")
    assert C.meta_step_cost(trades, n_support=ns, n_query=nq, meta_batch=b) == b * (25 * 3 + 75 * 3 + 75 + 75)
    art = mad.AdversarialMAML(tl.models.few_shot_cnn(5), attack=A.FGSM(eps=0.1), inner_lr=0.4, inner_steps=1)
    assert C.meta_step_cost(art, n_support=ns, n_query=nq, meta_batch=b) == b * (25 * 2 + 25 * 3 + 75 * 1 + 75)
    with pytest.raises(ValueError, match="no gradient-evaluation count"):
        C.meta_step_cost(tl.meta.Reptile(tl.models.few_shot_cnn(5)), n_support=ns, n_query=nq, meta_batch=b)


def test_union_and_adversarial_training_costs():
    pool = A.AttackPool([pgd(3), A.Rotation(max_angle=20, angle_steps=7)])
    per_example = 3 + 7 / 3 + 2 / 3 + 1
    assert C.union_training_cost(pool) == pytest.approx(per_example)
    assert C.adversarial_training_cost(pool, 100) == pytest.approx(100 * per_example)
    assert C.adversarial_training_cost(pgd(7), 10) == 80.0
    assert C.adversarial_training_cost(None, 10) == 10.0


def test_bad_input():
    with pytest.raises(TypeError, match="attack spec"):
        C.attack_cost("pgd")
    with pytest.raises(TypeError, match="AttackPool"):
        C.union_training_cost(pgd())
    with pytest.raises(ValueError):
        C.meta_step_cost(tl.meta.MAML(tl.models.few_shot_cnn(5)), n_support=0, n_query=5, meta_batch=1)
    with pytest.raises(ValueError):
        C.adversarial_training_cost(pgd(), -1)
