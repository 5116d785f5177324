import pytest

from analysis.core.config import load_config
from analysis.core.errors import ParameterError


def test_defaults_and_env_override(tmp_path):
    cfg = load_config(tmp_path / "missing.toml", env={"CONVLENS_MAX_UPLOAD_BYTES": "1234",
                                                      "CONVLENS_DATA_DIR": str(tmp_path)})
    assert cfg.limits.max_upload_bytes == 1234 and cfg.data_dir == tmp_path
    assert cfg.limits.max_image_pixels == 50_000_000


def test_toml_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('trusted_model_dir = "%s"\ndataset_dirs = ["%s"]\n[limits]\nmax_image_side = 512\n' % (tmp_path, tmp_path))
    cfg = load_config(f, env={})
    assert cfg.limits.max_image_side == 512 and cfg.trusted_model_dir == tmp_path.resolve()
    assert cfg.dataset_dirs == (tmp_path.resolve(),)


@pytest.mark.parametrize("text", ["[limits]\nmax_image_side = -1\n", "[limits]\nnope = 3\n",
                                  "[limits]\nmax_image_side = 'big'\n", "not toml ["])
def test_bad_config_is_a_clear_error(tmp_path, text):
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ParameterError):
        load_config(f, env={})
