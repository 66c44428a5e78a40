"""The CUDA paths: KN layers, AMP, torch.compile, channels_last, training and inference on a GPU.

Skipped where no CUDA device is present (CI has none); run them on a GPU machine with
``pytest tests/test_cuda.py``.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from segkn.models import build_model
from segkn.nn import KNConv2d
from tests.nn.reference import knconv_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo" / "shapes_unet_knresnet18_kn_2k_64x64.yaml"
CUDA = torch.device("cuda")

# kernel, stride, dilation, padding (int, or left, right, top, bottom)
GEOMETRIES = [(2, 1, 1, 1), (2, 1, 1, (1, 0, 1, 0)), (3, 2, 1, (0, 1, 2, 0)), (3, 1, 2, 2), (1, 2, 1, 0)]


@pytest.fixture
def no_tf32():
    """Exact float32 convolutions: cuDNN uses TF32 (10-bit mantissa) by default on Ampere and newer."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _pad4(padding):
    return (padding,) * 4 if isinstance(padding, int) else padding


def _inputs(seed=0, shape=(2, 8, 33, 47)):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * 3 + 1).relu()


@pytest.mark.parametrize("kernel,stride,dilation,padding", GEOMETRIES)
def test_knconv_float32_on_cuda_equals_float64_reference(kernel, stride, dilation, padding, no_tf32):
    conv = KNConv2d(8, 16, kernel, stride=stride, padding=padding, dilation=dilation, dropout_p=0.0)
    x = _inputs()
    ref_conv = conv.double()
    xr = x.clone().requires_grad_()
    ref = knconv_reference(
        xr, ref_conv.weight, ref_conv.bias, (stride, stride), _pad4(padding), (dilation, dilation)
    )
    grad = torch.randn_like(ref)
    ref.backward(grad)

    gpu = KNConv2d(8, 16, kernel, stride=stride, padding=padding, dilation=dilation, dropout_p=0.0)
    gpu.load_state_dict({k: v.float() for k, v in ref_conv.state_dict().items()})
    gpu = gpu.to(CUDA).train()
    xg = x.float().to(CUDA).requires_grad_()
    out = gpu(xg)
    out.backward(grad.float().to(CUDA))
    torch.testing.assert_close(out.double().cpu(), ref.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(xg.grad.double().cpu(), xr.grad, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(gpu.weight.grad.double().cpu(), ref_conv.weight.grad, rtol=1e-3, atol=1e-3)


def test_knconv_dropout_on_cuda_is_training_only_and_seeded():
    conv = KNConv2d(8, 16, 2, padding=1, dropout_p=0.3).to(CUDA)
    x = _inputs().float().to(CUDA)
    conv.train()
    torch.manual_seed(3)
    a = conv(x)
    torch.manual_seed(3)
    b = conv(x)
    c = conv(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    conv.eval()
    with torch.no_grad():
        assert torch.equal(conv(x), conv(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_knconv_under_autocast_keeps_float32_statistics(dtype):
    """Activations of a few hundred: their squares (the variance's sums) overflow float16."""
    conv = KNConv2d(8, 16, 2, padding=1, dropout_p=0.0).to(CUDA)
    x = (_inputs().float() * 100).to(CUDA)
    assert (x.square().sum(1) > torch.finfo(torch.float16).max).any()
    with torch.no_grad():
        ref = conv(x)
        with torch.autocast("cuda", dtype=dtype):
            low = conv(x)
    assert low.dtype == dtype and torch.isfinite(low).all()
    rel = (low.float() - ref).norm() / ref.norm()
    assert rel < 2e-2, f"{dtype}: relative error {rel:.3g}"


def _model(arch="deeplabv3plus", encoder="knresnet18", norm="kn"):
    torch.manual_seed(0)
    cfg = {"arch": arch, "encoder": encoder, "norm": norm, "num_classes": 5, "output_stride": 16}
    return build_model({**cfg, "dropout_p": 0.0})


@pytest.mark.parametrize("arch", ["deeplabv3", "deeplabv3plus", "unet"])
def test_model_on_cuda_matches_cpu(arch, no_tf32):
    model = _model(arch).eval()
    x = torch.rand(2, 3, 67, 91)
    with torch.no_grad():
        ref = model(x)
        out = model.to(CUDA)(x.to(CUDA)).cpu()
    assert out.shape == (2, 5, 67, 91)
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)


def test_batch_independence_on_cuda(no_tf32):
    model = _model().to(CUDA).eval()
    x = torch.rand(4, 3, 64, 64, device=CUDA)
    with torch.no_grad():
        batched = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-4)


def test_tf32_default_changes_kn_outputs_little():
    """KN subtracts mu * sum(W) from the convolution, so TF32's rounding of the convolution is amplified
    where a window's mean is large against its spread: measure what that does to a whole model
    (H200, torch 2.11: relative error 1.4e-2, 99.2% of pixels keep their class)."""
    model = _model("deeplabv3plus").to(CUDA).eval()
    x = torch.rand(2, 3, 128, 256, device=CUDA)
    old = torch.backends.cudnn.allow_tf32
    try:
        with torch.no_grad():
            torch.backends.cudnn.allow_tf32 = False
            exact = model(x)
            torch.backends.cudnn.allow_tf32 = True
            tf32 = model(x)
    finally:
        torch.backends.cudnn.allow_tf32 = old
    rel = ((tf32 - exact).norm() / exact.norm()).item()
    agree = (tf32.argmax(1) == exact.argmax(1)).float().mean().item()
    print(f"TF32 against float32 logits: relative error {rel:.2e}, argmax agreement {agree:.4%}")
    assert rel < 5e-2 and agree > 0.98


@pytest.mark.parametrize("amp", [torch.bfloat16, torch.float16])
def test_train_steps_with_amp_on_cuda(amp):
    model = _model().to(CUDA).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    x = torch.rand(2, 3, 64, 64, device=CUDA)
    y = torch.randint(0, 5, (2, 64, 64), device=CUDA)
    losses = []
    for _ in range(8):
        with torch.autocast("cuda", dtype=amp):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_compile_and_channels_last_on_cuda_match_eager(no_tf32):
    model = _model("unet").to(CUDA).eval()
    x = torch.rand(2, 3, 64, 96, device=CUDA)
    with torch.no_grad():
        ref = model(x)
        cl = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        compiled = torch.compile(model)(x)
    torch.testing.assert_close(cl, ref, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(compiled, ref, rtol=1e-3, atol=1e-3)


def test_compiled_training_step_on_cuda_matches_eager_gradients(no_tf32):
    model = _model("unet").to(CUDA).train()
    x = torch.rand(2, 3, 64, 64, device=CUDA)
    y = torch.randint(0, 5, (2, 64, 64), device=CUDA)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    eager = torch.autograd.grad(loss, list(model.parameters()))
    compiled = torch.compile(model)
    loss_c = torch.nn.functional.cross_entropy(compiled(x), y)
    grads = torch.autograd.grad(loss_c, list(model.parameters()))
    torch.testing.assert_close(loss_c, loss, rtol=1e-3, atol=1e-4)
    for a, b in zip(grads, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3)


def test_train_on_cuda_then_eval_and_infer(tmp_path):
    """The CLI end to end on a GPU: train with AMP + compile, resume, evaluate, segment images."""
    run = tmp_path / "run"
    short = [
        "train.iterations=6",
        "train.warmup_iters=0",
        "train.val_interval=3",
        "train.checkpoint_interval=3",
    ]
    common = ["--set", "train.device=cuda", "train.amp=bf16", "train.compile=true", *short]
    tool = [sys.executable, "tools/train.py"]
    subprocess.run([*tool, str(DEMO), "--run-dir", str(run), *common], check=True, cwd=ROOT)
    assert (run / "last.pth").is_file() and (run / "best.pth").is_file()
    more = ["--set", "train.iterations=8", "train.device=cuda"]
    subprocess.run([*tool, "--resume", str(run), *more], check=True, cwd=ROOT)
    evaluate = [sys.executable, "tools/eval.py", str(run), "--set", "train.device=cuda"]
    subprocess.run(evaluate, check=True, cwd=ROOT)

    from segkn.inference import Segmenter

    gpu = Segmenter.from_checkpoint(run / "last.pth", device="cuda", amp="off")
    cpu = Segmenter.from_checkpoint(run / "last.pth", device="cpu")
    image = (np.random.default_rng(0).random((61, 83, 3)) * 255).astype(np.uint8)
    a, b = gpu.predict(image), cpu.predict(image)
    assert a.shape == (61, 83)
    assert (a == b).mean() > 0.999


@pytest.mark.parametrize("encoder, norm", [("knresnet18", "kn"), ("resnet18", "gn")])
def test_per_sample_gradients_on_cuda_equal_a_loop_over_samples(encoder, norm):
    """DP-SGD's per-sample gradients (functorch) on a GPU, in float64, against one backward per sample."""
    from segkn.engine.losses import SegmentationLoss
    from segkn.engine.privacy import per_sample_gradients
    from tests.engine.test_privacy import _batch, _loop_gradients, _model

    torch.manual_seed(0)
    model = _model("unet", encoder, norm).double().to(CUDA).train()
    criterion = SegmentationLoss(dice_weight=0.5)
    images, masks = (t.to(CUDA) for t in _batch(3))
    grads, losses = per_sample_gradients(model, criterion, images, masks)
    for i, expected in enumerate(_loop_gradients(model, criterion, images, masks)):
        for name, g in expected.items():
            torch.testing.assert_close(grads[name][i], g, rtol=0, atol=1e-6, msg=f"sample {i}: {name}")
    assert losses.device.type == "cuda" and torch.isfinite(losses).all()


def test_private_training_on_cuda_spends_the_cpu_budget(tmp_path):
    """A DP-SGD run on a GPU (bf16 autocast, Poisson steps, 2 accumulated chunks) spends exactly the
    epsilon of the same run on the CPU (the accountant sees only noise, sample rate and steps)."""
    from segkn.engine.checkpoint import load_checkpoint
    from segkn.engine.trainer import train
    from tests.engine._configs import tiny_config

    privacy = {"enabled": True, "noise_multiplier": 1.0, "max_grad_norm": 1.0}
    runs = {}
    for device, amp in (("cuda", "bf16"), ("cpu", "off")):
        short = {"device": device, "amp": amp, "accumulate": 2, "val_interval": 100, "checkpoint_interval": 4}
        cfg = tiny_config(tmp_path, name=device, privacy=privacy, train=short)
        train(cfg)
        runs[device] = load_checkpoint(cfg.run_path / "last.pth")
    assert runs["cuda"]["privacy"]["history"] == runs["cpu"]["privacy"]["history"]
    assert runs["cuda"]["privacy"]["history"][0][2] == 4  # 4 noisy steps
    assert runs["cuda"]["privacy"]["epsilon"] == pytest.approx(runs["cpu"]["privacy"]["epsilon"])
    for key, value in runs["cuda"]["model"].items():
        assert torch.isfinite(value.float()).all(), key
