"""The explorer behind `cinn-sr explore`: its actions, its settings files and its HTTP API
(the page itself, in a real browser, is tested in test_explore_page.py)."""

import base64
import io
import json
import threading
import urllib.request

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from flow_helpers import photo_crop
from PIL import Image

import cinn_sr
from cinn_sr.datasets import read_image, write_image
from cinn_sr.explore.server import Explorer, data_url, make_server
from cinn_sr.explore.session import Settings, mask_to_data_url, render
from cli import main


@pytest.fixture(scope="module")
def model():
    return cinn_sr.load("small-4x")


@pytest.fixture(scope="module")
def lr_rgb():
    crop = photo_crop("coffee", 100, 200, 96)
    return np.floor(cinn_sr.datasets.imresize(crop, 1 / 4)[0].clamp(0, 1).permute(1, 2, 0)
                    .numpy() * 255 + 0.5).astype(np.uint8)  # 24 x 24


def decoded(url: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as image:
        return np.array(image.convert("RGB"))


def box_mask(size: int, rows: slice, cols: slice) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[rows, cols] = True
    return mask


def test_a_region_changes_inside_and_nothing_outside_and_settings_replay_it(model, lr_rgb):
    explorer = Explorer(model)
    shown = explorer.open(lr_rgb, is_hr=False)
    assert shown["size"] == [96, 96] and shown["hr"] is None
    first = explorer.render(seed=3, temperature=0.7, brush=None, uncertainty=0)
    mask = box_mask(96, slice(20, 60), slice(30, 70))
    edited = explorer.region(mask_to_data_url(mask), seed=5, temperature=1.0)
    before, after = decoded(first["sr"]), decoded(edited["sr"])
    outside = ~mask.numpy()
    assert np.array_equal(before[outside], after[outside])
    assert (np.abs(before.astype(int) - after.astype(int)).max(-1)[mask.numpy()] > 2).mean() > 0.5
    settings = Settings.from_json(edited["settings"])
    assert settings.seed == 3 and len(settings.regions) == 1
    replayed = render(model, model.prepare(torch.from_numpy(lr_rgb).permute(2, 0, 1)[None]
                                           .float() / 255), settings)
    assert np.array_equal(decoded(data_url(replayed[0].clamp(0, 1))), after)


def test_a_brush_sets_the_temperature_where_painted(model, lr_rgb):
    explorer = Explorer(model)
    explorer.open(lr_rgb, is_hr=False)
    mode = decoded(explorer.render(0, 0.0, None, 0)["sr"])
    left = box_mask(96, slice(0, 96), slice(0, 48))
    brushed = decoded(explorer.render(0, 0.0, {"mask": mask_to_data_url(left),
                                               "temperature": 1.0}, 0)["sr"])
    change = np.abs(brushed.astype(int) - mode.astype(int)).max(-1)
    assert change[:, :16].mean() > 5 * max(change[:, 88:].mean(), 0.01)


def test_uncertainty_metrics_and_errors(model, lr_rgb, tmp_path):
    explorer = Explorer(model)
    with pytest.raises(ValueError, match="open an image first"):
        explorer.render(0, 0.7, None, 0)
    hr = read_image(cinn_sr.datasets.sample_photo_paths()[0][1])[:98, :101]
    shown = explorer.open(hr, is_hr=True)  # cropped to 96 x 100, downscaled to 24 x 25
    assert shown["size"] == [96, 100] and shown["hr"] is not None
    answer = explorer.render(1, 0.7, None, 4)
    assert set(answer["metrics"]) == {"psnr", "lr_psnr"}  # no LPIPS model given
    assert decoded(answer["uncertainty"]).shape == (96, 100, 3)
    assert answer["uncertainty_max"] > 0
    zero = explorer.render(1, 0.0, None, 4)
    assert zero["uncertainty_max"] == 0.0
    with pytest.raises(ValueError, match="NaN/inf"):
        explorer.render(1, 1e6, None, 0)
    assert explorer.settings.temperature == 0.0  # the last good image stays


def test_the_http_api_answers_json_and_errors_as_one_line(model, lr_rgb):
    server = make_server(Explorer(model), port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"

    def post(path, body):
        request = urllib.request.Request(url + path, json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(request) as reply:
            return json.loads(reply.read())

    try:
        with urllib.request.urlopen(url + "/") as reply:
            assert b"cinn-sr explore" in reply.read()
        assert post("/api/open", {"image": "data:image/png;base64,AAAA"}) == {
            "error": "the upload: not a recognised image file"
        }
        assert "open an image first" in post("/api/render", {"temperature": 0.7})["error"]
        opened = post("/api/open", {"image": data_url(lr_rgb)})
        assert opened["size"] == [96, 96]
        answer = post("/api/render", {"seed": 2, "temperature": 0.7})
        assert decoded(answer["sr"]).shape == (96, 96, 3)
        assert "temperature" in post("/api/render", {"temperature": -1})["error"]
        hostile = [
            ("/api/render", {"temperature": 0.7, "uncertainty": 10**7}, "0 (none) or 2 to 16"),
            ("/api/render", {"temperature": 0.7, "seed": 2**70}, "seed must be an integer"),
            ("/api/render", {"temperature": 0.7, "seed": 1.5}, "seed must be an integer"),
            ("/api/render", {"temperature": "0.7"}, "temperature must be a number"),
            ("/api/render", {}, "lacks 'temperature'"),
            ("/api/render", {"temperature": 0.7, "brush": "x"}, "brush must be"),
            ("/api/open", {"image": data_url(lr_rgb), "hr": "false"}, "'hr' must be a bool"),
            ("/api/region", {"mask": 5, "temperature": 0.7}, "mask must be a PNG data URL"),
        ]
        for path, body, message in hostile:
            assert message in post(path, body)["error"], (path, body)
    finally:
        server.shutdown()
        server.server_close()


def test_cli_sample_with_settings_writes_the_explorers_image(model, lr_rgb, tmp_path):
    explorer = Explorer(model)
    explorer.open(lr_rgb, is_hr=False)
    explorer.render(7, 0.6, {"mask": mask_to_data_url(box_mask(96, slice(0, 40), slice(0, 96))),
                             "temperature": 0.9}, 0)
    answer = explorer.region(mask_to_data_url(box_mask(96, slice(50, 90), slice(10, 50))), 9, 0.8)
    (tmp_path / "settings.json").write_text(answer["settings"])
    write_image(tmp_path / "lr.png", lr_rgb)
    runner = CliRunner()
    args = ["sample", "small-4x", str(tmp_path / "lr.png"), "--out", str(tmp_path / "sr"),
            "--device", "cpu", "--settings", str(tmp_path / "settings.json")]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert np.array_equal(read_image(tmp_path / "sr" / "lr_explore.png"), decoded(answer["sr"]))
    both = runner.invoke(main, [*args, "--temperature", "0.5", "--seed", "3"])
    assert both.exit_code == 2 and "drop --temperature, --seed" in both.output
    (tmp_path / "bad.json").write_text('{"format": "something"}')
    bad = runner.invoke(main, [*args[:-1], str(tmp_path / "bad.json")])
    assert bad.exit_code == 2 and "not a cinn-sr explore settings file" in bad.output


def test_a_port_in_use_is_one_line(model):
    taken = make_server(Explorer(model), port=0)
    try:
        with pytest.raises(OSError, match="choose another --port"):
            make_server(Explorer(model), port=taken.server_address[1])
    finally:
        taken.server_close()


def test_settings_files_are_checked_field_by_field(monkeypatch):
    from cinn_sr.datasets import OptionError
    from cinn_sr.explore.session import mask_from_data_url

    good = json.loads(Settings(seed=1, temperature=0.5).to_json())
    for change, message in [
        ({"version": 99}, "version 99"),
        ({"seed": -1}, "seed must be an integer"),
        ({"seed": True}, "seed must be an integer"),
        ({"temperature": "0.5"}, "temperature must be a number"),
        ({"temperature": float("nan")}, "finite number"),
        ({"brush": {"mask": 3, "temperature": 1}}, "brush mask must be a PNG data URL"),
        ({"regions": [{"mask": "x", "seed": 1}]}, "region temperature must be a number"),
        ({"regions": "none"}, "regions must be a list"),
    ]:
        with pytest.raises(OptionError, match=message):
            Settings.from_json(json.dumps({**good, **change}))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a 96 x 96 mask is now a "bomb"
    with pytest.raises(ValueError, match="a mask must be a PNG data URL"):
        mask_from_data_url(mask_to_data_url(torch.ones(96, 96, dtype=torch.bool)), (96, 96))
