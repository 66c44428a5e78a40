import torch
import torch.nn.functional as F

from segkn.nn import KernelNorm2d, KernelNorm2d1x1


def test_output_lays_units_side_by_side():
    x = torch.randn(2, 3, 7, 9)
    out = KernelNorm2d(kernel_size=(2, 3), stride=(2, 1), padding=(1, 0, 2, 1)).eval()(x)
    h_out = (7 + 2 + 1 - 2) // 2 + 1
    w_out = (9 + 1 + 0 - 3) // 1 + 1
    assert out.shape == (2, 3, h_out * 2, w_out * 3)


def test_each_unit_is_normalized_with_zero_padding_counted():
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64) + 3.0
    norm = KernelNorm2d(kernel_size=3, stride=1, padding=1, eps=0.0).eval()
    out = norm(x)
    # unit at output position (0, 0): rows -1..1, cols -1..1 of x, with zeros where padded
    unit = F.pad(x, (1, 1, 1, 1))[0, :, 0:3, 0:3]
    expected = (unit - unit.mean()) / unit.var(unbiased=False).sqrt()
    assert torch.allclose(out[0, :, 0:3, 0:3], expected)
    assert torch.allclose(out[0, :, 0:3, 0:3].mean(), torch.tensor(0.0, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(out[0, :, 0:3, 0:3].var(unbiased=False), torch.tensor(1.0, dtype=torch.float64))


def test_dropout_acts_only_in_training():
    x = torch.randn(2, 4, 6, 6)
    norm = KernelNorm2d(2, 2, 0, dropout_p=0.5)
    assert torch.equal(norm.eval()(x), norm.eval()(x))
    norm.train()
    assert not torch.equal(norm(x), norm(x))
    one = KernelNorm2d1x1(dropout_p=0.5)
    assert torch.equal(one.eval()(x), one.eval()(x))
    assert not torch.equal(one.train()(x), one.train()(x))


def test_batch_independence():
    x = torch.randn(4, 3, 8, 8)
    norm = KernelNorm2d(3, 1, 1).eval()
    assert torch.allclose(norm(x)[1:2], norm(x[1:2]))
