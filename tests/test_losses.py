"""Loss functions against hand-computed values and the NPO paper's two limits."""
import math

import pytest
import torch
import torch.nn.functional as F

from core.losses import (IGNORE_INDEX, dpo_loss, gradient_ascent_loss, kl_to_reference, npo_loss, sequence_nll,
                         simnpo_loss, token_mean)


def test_sequence_nll_matches_hand_computation():
    # One sequence, vocab 2: position 0 predicts label[1], position 1 predicts label[2].
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [9.0, 9.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1, 0]])
    nll, n = sequence_nll(logits, labels)
    expected = math.log(2) + (-2.0 + math.log(math.exp(2) + 1))  # -log 1/2  +  -log softmax([2,0])[0]
    assert n.tolist() == [2]
    assert nll.item() == pytest.approx(expected, rel=1e-6)


def test_sequence_nll_skips_ignored_positions():
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4, IGNORE_INDEX], [IGNORE_INDEX, 1, 2, 3, 4]])
    nll, n = sequence_nll(logits, labels)
    logp = F.log_softmax(logits, -1)
    assert n.tolist() == [2, 4]
    assert nll[0].item() == pytest.approx(-(logp[0, 1, 3] + logp[0, 2, 4]).item(), rel=1e-5)
    assert nll[1].item() == pytest.approx(-sum(logp[1, t, t + 1] for t in range(4)).item(), rel=1e-5)


def test_token_mean_and_ga_are_batch_token_means():
    nll, n = torch.tensor([6.0, 2.0]), torch.tensor([3, 1])
    assert token_mean(nll, n).item() == pytest.approx(2.0)
    assert gradient_ascent_loss(nll, n).item() == pytest.approx(-2.0)


@pytest.mark.parametrize("beta", [0.05, 0.1, 1.0, 4.0])
def test_npo_at_reference_equals_2_over_beta_log_2(beta):
    nll = torch.tensor([3.0, 17.5, 40.0])
    assert npo_loss(nll, nll.clone(), beta).item() == pytest.approx(2 / beta * math.log(2), rel=1e-6)


def test_npo_hand_value():
    # -(2/β)·log σ(β·(NLL − NLL_ref)) with β=0.5, difference 2: -(4)·log σ(1)
    value = npo_loss(torch.tensor([5.0]), torch.tensor([3.0]), 0.5).item()
    assert value == pytest.approx(-4 * math.log(1 / (1 + math.exp(-1))), rel=1e-6)


def test_npo_gradient_tends_to_gradient_ascent_as_beta_vanishes():
    """d NPO / d NLL = -2σ(-β·Δ) -> -1 as β -> 0: the gradient of GA on the summed NLL (mean over batch)."""
    ref = torch.tensor([4.0, 9.0, 1.0])
    ga_grad = torch.full((3,), -1.0 / 3)            # d/dNLL of -mean(NLL)
    previous_gap = None
    for beta in (1.0, 0.1, 0.01, 0.001):
        nll = torch.tensor([6.0, 8.0, 5.0], requires_grad=True)
        npo_loss(nll, ref, beta).backward()
        gap = (nll.grad - ga_grad).abs().max().item()
        if previous_gap is not None:
            assert gap < previous_gap
        previous_gap = gap
    assert previous_gap < 2e-3


def test_npo_saturates_where_ga_does_not():
    nll = torch.tensor([200.0], requires_grad=True)
    npo_loss(nll, torch.tensor([5.0]), 0.1).backward()
    assert abs(nll.grad.item()) < 1e-6  # forgotten far below the reference: NPO stops pushing


def test_simnpo_hand_value():
    nll, n = torch.tensor([10.0, 4.0]), torch.tensor([5, 2])  # both mean NLL 2
    beta, delta = 2.0, 0.5
    expected = -(2 / beta) * math.log(1 / (1 + math.exp(-beta * (2 - delta))))
    assert simnpo_loss(nll, n, beta, delta).item() == pytest.approx(expected, rel=1e-6)


def test_dpo_hand_value_and_symmetry_point():
    beta = 0.1
    same = dpo_loss(torch.tensor([3.0]), torch.tensor([3.0]), torch.tensor([7.0]), torch.tensor([7.0]), beta)
    assert same.item() == pytest.approx(2 / beta * math.log(2), rel=1e-6)
    # chosen became 1 nat likelier, rejected 2 nats less likely: margin 3
    moved = dpo_loss(torch.tensor([2.0]), torch.tensor([3.0]), torch.tensor([9.0]), torch.tensor([7.0]), beta)
    assert moved.item() == pytest.approx(-(2 / beta) * math.log(1 / (1 + math.exp(-beta * 3))), rel=1e-6)


def test_kl_zero_for_same_model_and_matches_definition():
    logits = torch.randn(2, 4, 5)
    labels = torch.tensor([[IGNORE_INDEX, 1, 2, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX, 3, 0]])
    assert kl_to_reference(logits, logits, labels).item() == pytest.approx(0.0, abs=1e-7)
    ref = torch.randn(2, 4, 5)
    p_ref, logp, logp_ref = F.softmax(ref, -1), F.log_softmax(logits, -1), F.log_softmax(ref, -1)
    per = (p_ref * (logp_ref - logp)).sum(-1)  # [2, 4]
    # supervised next-token positions: labels[:, 1:] != IGNORE -> (0,0), (0,1), (1,1), (1,2)
    expected = (per[0, 0] + per[0, 1] + per[1, 1] + per[1, 2]) / 4
    assert kl_to_reference(logits, ref, labels).item() == pytest.approx(expected.item(), rel=1e-5)


def test_kl_over_all_positions_is_the_reference_codes_batchmean_kl():
    """--kl-positions all: open-unlearning's compute_kl_divergence, kl_div(log p_current, log p_ref,
    reduction="batchmean", log_target=True) over the [B·T, V] rows: every position, prompt and padding too."""
    from core.losses import kl_all_positions

    current, ref = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    reference = F.kl_div(F.log_softmax(current, -1).view(-1, 7), F.log_softmax(ref, -1).view(-1, 7),
                         reduction="batchmean", log_target=True)
    assert kl_all_positions(current, ref).item() == pytest.approx(reference.item(), rel=1e-5)
    # by hand on one position: KL((1/2, 1/2) || (e/(e+1), 1/(e+1)))
    hand = torch.tensor([[[1.0, 0.0]]])
    p = math.e / (math.e + 1)
    expected = 0.5 * math.log(0.5 / p) + 0.5 * math.log(0.5 / (1 - p))
    assert kl_all_positions(hand, torch.zeros(1, 1, 2)).item() == pytest.approx(expected, rel=1e-6)
    # answer positions only (ours) differs as soon as the prompt's distributions differ
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 3, 4]] * 2)
    assert kl_to_reference(current, ref, labels).item() != pytest.approx(reference.item(), rel=1e-3)


def test_simnpo_on_raw_text_normalises_by_the_predicted_tokens():
    """A raw .txt example labels every position. Ours divides the summed NLL by the tokens that are
    predicted (T - 1: position 0 has nothing before it); open-unlearning's SimNPO counts labels != -100,
    T. Pinned here by hand: T = 4 positions, NLL 6 over the 3 predictions."""
    nll, n_tokens = torch.tensor([6.0]), torch.tensor([3])
    ours = simnpo_loss(nll, n_tokens, beta=1.0, delta=0.0)
    assert ours.item() == pytest.approx(-2.0 * F.logsigmoid(torch.tensor(6.0 / 3)).item())
    theirs = -2.0 * F.logsigmoid(torch.tensor(6.0 / 4)).item()
    assert ours.item() != pytest.approx(theirs)
    labels = torch.tensor([[5, 6, 7, 8]])                 # every position labelled
    assert sequence_nll(torch.randn(1, 4, 9), labels)[1].tolist() == [3]
