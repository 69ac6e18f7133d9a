"""Round-trip error bounds of the dense-target storage forms."""
import pytest
import torch

from distill.cache.compression import Compression, PatchCodec, PcaBasis, dequantize_int8, quantize_int8
from common.errors import UserError


def test_int8_error_is_at_most_half_a_step_per_token():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 4, 48) * torch.rand(3, 4, 4, 1) * 10
    q, scale = quantize_int8(x)
    assert q.dtype == torch.int8 and scale.shape == x.shape[:-1]
    err = (dequantize_int8(q, scale) - x).abs()
    bound = x.abs().amax(-1, keepdim=True) / 254
    assert (err <= bound * (1 + 1e-5) + 1e-7).all()


def test_pca_keeps_a_low_rank_signal_and_its_error_is_the_dropped_variance():
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(64, 64))[0][:, :8].T  # 8 orthonormal directions in 64-d
    signal = torch.randn(2000, 8) * torch.linspace(5, 1, 8)
    noise = 0.01 * torch.randn(2000, 64)
    x = (signal @ basis + noise + 3.0).reshape(10, 10, 20, 64)
    pca = PcaBasis.fit(x, 8)
    err = pca.decode(pca.encode(x)) - x
    assert err.pow(2).mean().sqrt() < 0.02  # only the isotropic noise outside the 8 directions is lost
    assert pca.explained > 0.999
    full = PcaBasis.fit(x, 64)
    assert torch.allclose(full.decode(full.encode(x)), x, atol=1e-4)


def test_pca_refit_is_bitwise_identical():
    x = torch.randn(500, 32)
    a, b = PcaBasis.fit(x, 4), PcaBasis.fit(x.clone(), 4)
    assert torch.equal(a.components, b.components) and torch.equal(a.mean, b.mean)


def test_pca_decodes_on_the_codes_device_and_keeps_its_fitted_basis():
    # A cached run decodes each batch where it arrives; the basis it was fitted as stays for encode and saving.
    x = torch.randn(200, 32)
    pca = PcaBasis.fit(x, 4)
    fitted = pca.tensors()
    codes = pca.encode(x)
    assert pca.decode(codes.to("meta")).device.type == "meta"
    assert torch.equal(pca.encode(x), codes) and all(t.device.type == "cpu" for t in pca.tensors().values())
    assert all(torch.equal(pca.tensors()[k], fitted[k]) for k in fitted)


@pytest.mark.parametrize("spec", ["none", "int8", "pca:16"])
def test_codec_round_trip_within_storage_precision(spec):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 3, 16)
    comp = Compression.parse(spec)
    codec = PatchCodec(comp, torch.bfloat16, PcaBasis.fit(x, 16) if comp.kind == "pca" else None)
    y = codec.decode(codec.encode(x))
    assert y.shape == x.shape and y.dtype == torch.float32
    assert (y - x).abs().max() <= x.abs().max() * 2 ** -7  # bf16 keeps 8 significant bits


@pytest.mark.parametrize("spec", ["zip", "pca:", "pca:0", "pca:x"])
def test_bad_compression_is_a_user_error(spec):
    with pytest.raises(UserError, match="--compress"):
        Compression.parse(spec)
