import math
import pytest
import torch

from tests.helpers import linear_student
from transfer.training.aft import aft_loss
from transfer.training.objectives import AFT, METHODS, BTuning, FactorTransfer, make_objective

torch.manual_seed(0)


def direct_aft(phi, psi, s):
    """AFT's R written out from its definition, with explicit centring and norms."""
    b = phi.shape[0]
    h = torch.eye(b, dtype=phi.dtype) - torch.ones(b, b, dtype=phi.dtype) / b
    w = psi * (1 / (1 + torch.exp(-s)))
    a, t = h @ phi, h @ w
    a = a / torch.clamp(torch.sqrt((a ** 2).sum(1, keepdim=True)), min=1e-8)
    t = t / torch.clamp(torch.sqrt((t ** 2).sum(1, keepdim=True)), min=1e-8)
    diff = a @ a.T - t @ t.T
    return torch.sqrt((diff ** 2).sum() / b ** 2 + 1e-8)


def random_orthogonal(n, dtype=torch.float64):
    q, r = torch.linalg.qr(torch.randn(n, n, dtype=dtype))
    return q * torch.sign(torch.diagonal(r))


def test_aft_loss_matches_its_definition_value_and_gradient():
    phi = torch.randn(16, 5, dtype=torch.float64, requires_grad=True)
    psi = torch.randn(16, 9, dtype=torch.float64, requires_grad=True)
    s = torch.randn(9, dtype=torch.float64, requires_grad=True)
    ours = aft_loss(phi, psi, s)
    ref = direct_aft(phi, psi, s)
    assert ours.ndim == 0
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    g_ours = torch.autograd.grad(ours, (phi, psi, s))
    g_ref = torch.autograd.grad(ref, (phi, psi, s))
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    assert torch.autograd.gradcheck(aft_loss, (phi, psi, s))


def test_zero_when_student_is_a_rotation_of_the_weighted_teacher():
    psi = torch.randn(32, 6, dtype=torch.float64)
    s = torch.randn(6, dtype=torch.float64)
    weighted = psi * torch.sigmoid(s)
    phi = (weighted - weighted.mean(0)) @ random_orthogonal(6)
    assert float(aft_loss(phi, psi, s)) == pytest.approx(1e-4, abs=1e-9)  # sqrt(0 + 1e-8)
    assert float(aft_loss(torch.randn(32, 6, dtype=torch.float64), psi, s)) > 0.1


def test_invariant_to_rotating_the_student():
    phi = torch.randn(24, 7, dtype=torch.float64)
    psi, s = torch.randn(24, 11, dtype=torch.float64), torch.randn(11, dtype=torch.float64)
    torch.testing.assert_close(aft_loss(phi @ random_orthogonal(7), psi, s), aft_loss(phi, psi, s), rtol=1e-10, atol=0)


def test_aft_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match="batches differ"):
        aft_loss(torch.randn(4, 3), torch.randn(5, 3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        aft_loss(torch.randn(4, 3), torch.randn(4, 3), torch.zeros(4))


def test_learned_weights_start_at_one_half_and_identity_ablation_has_none():
    aft = make_objective("aft", 4, 6)
    assert torch.equal(aft.weights(), torch.full((6,), 0.5))
    assert set(aft.weight_stats()) == {"weight_mean", "weight_std", "weight_min", "weight_max"}
    assert make_objective("aft_identity", 4, 6).weights() is None
    assert list(make_objective("aft_identity", 4, 6).parameters()) == []


def test_dense_ablation_starts_equal_to_identity_weights():
    phi, psi = torch.randn(20, 4), torch.randn(20, 6)
    torch.testing.assert_close(make_objective("aft_dense", 4, 6)(phi, psi),
                               make_objective("aft_identity", 4, 6)(phi, psi))


def test_rbf_kernel_variant_is_zero_for_matching_kernels():
    psi = torch.randn(16, 5, dtype=torch.float64)
    rbf = AFT(5, 5, kernel="rbf", learn_weights=False)
    phi = (psi - psi.mean(0)) @ random_orthogonal(5)
    assert float(rbf(phi, psi)) == pytest.approx(1e-4, abs=1e-6)


def test_stl_is_zero():
    assert float(make_objective("stl", 4, 6)(torch.randn(8, 4), torch.randn(8, 6))) == 0.0


def test_kd_known_values():
    phi = torch.randn(10, 4)
    kd = make_objective("kd", 4, 4)
    with torch.no_grad():
        kd.map.weight.copy_(torch.eye(4))
        kd.map.bias.zero_()
    assert kd(phi, phi).item() == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        kd.map.weight.zero_()
    psi = torch.randn(10, 4)
    assert kd(phi, psi).item() == pytest.approx(float((psi ** 2).mean()), rel=1e-6)


def test_no_kernel_ablation_known_value():
    nk = make_objective("aft_nokernel", 3, 5)
    with torch.no_grad():
        nk.map.weight.zero_()
    phi = torch.randn(12, 3)
    assert nk(phi, torch.randn(12, 5)).item() == pytest.approx(float(((phi - phi.mean(0)) ** 2).mean()), rel=1e-5)


def test_rkd_is_zero_for_a_scaled_copy_and_positive_otherwise():
    psi = torch.randn(12, 6)
    rkd = make_objective("rkd", 6, 6)
    assert rkd(3.0 * psi, psi).item() == pytest.approx(0.0, abs=1e-6)
    assert rkd(torch.randn(12, 6), psi).item() > 0.01


def test_factor_transfer_starts_at_its_bias_with_a_finite_first_gradient():
    # The last layer's weights start at 0 but its bias does not (the authors' init): with both at 0 the output was
    # exactly 0, and normalising it gave first gradients of norm ~1e9.
    phi, psi = torch.randn(8, 4), torch.randn(8, 6)
    ft = make_objective("ft", 4, 6)
    assert isinstance(ft, FactorTransfer)
    last = ft.mlp[-1]
    assert last.weight.abs().sum() == 0 and last.bias.abs().sum() > 0
    norm = torch.nn.functional.normalize
    expected = (norm(last.bias.detach(), dim=0) - norm(psi, dim=1)).abs().sum(1).mean()
    r = ft(phi, psi)
    assert r.item() == pytest.approx(float(expected), rel=1e-5)
    r.backward()
    assert max(float(p.grad.norm()) for p in ft.parameters() if p.grad is not None) < 1e3


def test_kd_map_has_a_bias_and_follows_the_students_lr():
    kd = make_objective("kd", 4, 6)
    assert kd.map.bias is not None  # the authors' map is affine: it can fit the teacher's mean
    assert kd.follows_student_lr and make_objective("rkd", 4, 6).follows_student_lr
    assert make_objective("ft", 4, 6).follows_student_lr and not make_objective("aft", 4, 6).follows_student_lr


def test_aft_is_blind_to_the_teachers_feature_scale():
    # Why unit-norm (sentence-transformers) teachers may stay as defined for AFT: its kernels are normalised.
    phi, psi = torch.randn(16, 4), torch.randn(16, 6)
    aft = make_objective("aft", 4, 6)
    assert aft(phi, 14.9 * psi).item() == pytest.approx(aft(phi, psi).item(), rel=1e-5)


def test_every_method_has_a_beta_grid_on_its_own_scale():
    from transfer.training.objectives import BETA_GRIDS

    assert set(BETA_GRIDS) == set(METHODS)
    assert all(isinstance(g, tuple) and all(isinstance(b, float) for b in g) for g in BETA_GRIDS.values())
    # One grid for all cannot work: KD's squared error is ~1e-3 of the cross-entropy against unit-norm teachers, FT's
    # L1 sum over the teacher's dimensions ~30: their grids sit on either side of AFT's kernel distance (~0.1).
    centre = {m: math.exp(sum(math.log(b) for b in BETA_GRIDS[m]) / len(BETA_GRIDS[m])) for m in ("kd", "aft", "ft")}
    assert centre["kd"] > 100 * centre["aft"] and centre["aft"] > 5 * centre["ft"]


def test_btuning_known_value_and_teacher_mixing():
    phi, psi = torch.randn(10, 3), torch.randn(10, 5)  # teacher 0: cols 0-1, teacher 1: cols 2-4
    m_s, m_0, m_1 = torch.randn(2, 3), torch.randn(2, 2), torch.randn(2, 3)
    bt = BTuning(3, 5, student_weights=m_s, teacher_weights=[m_0, m_1], teacher_scores=[0.0, 10.0],
                 teacher_slices=[(0, 2), (2, 5)])
    w = torch.softmax(torch.tensor([0.0, 10.0]) / 0.1, 0)
    target = w[0] * psi[:, :2] @ m_0.T + w[1] * psi[:, 2:] @ m_1.T
    assert bt(phi, psi).item() == pytest.approx(float(((phi @ m_s.T - target) ** 2).mean()), rel=1e-5)
    assert float(w[1]) > 0.999  # a much better LogME score takes nearly all the weight


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match="choose one of: " + ", ".join(METHODS)):
        make_objective("distill", 4, 4)


@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("stl", "btune")])
def test_every_objective_gives_finite_gradients(method):
    phi = torch.randn(16, 4, requires_grad=True)
    obj = make_objective(method, 4, 6)
    r = obj(phi, torch.randn(16, 6))
    r.backward()
    assert torch.isfinite(r) and r.item() >= 0
    assert phi.grad is not None and torch.isfinite(phi.grad).all()
    # FT's zero-initialised last layer passes no gradient to the student until it has moved itself.
    moving = [phi.grad] if method != "ft" else [p.grad for p in obj.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in moving)


@pytest.mark.parametrize("method", ["ft", "kd", "aft"])
def test_a_regulariser_does_not_throttle_the_students_first_step(method):
    # FT's zero-initialised last layer meets a normalisation at 0: its first gradient has a norm near
    # 1e9. Clipped together with the student's, it shrank the student's step about 100-fold.
    from transfer.training.trainer import train_step

    x, y, psi = torch.randn(16, 6), torch.randint(0, 3, (16,)), torch.randn(16, 5)

    def student_moved(name: str) -> float:
        torch.manual_seed(1)
        student, objective = linear_student(), make_objective(name, 4, 5)
        before = [p.detach().clone() for p in student.parameters()]
        optimizer = torch.optim.Adam([*student.parameters(), *objective.parameters()], lr=1e-3)
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        assert train_step(student, objective, optimizer, scaler, x, y, psi, 1.0, 1.0, "cpu") is not None
        return float(sum((p.detach() - b).abs().sum() for p, b in zip(student.parameters(), before)))

    assert student_moved(method) > 0.5 * student_moved("stl")
