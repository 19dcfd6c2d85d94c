"""`cinn-sr explore`: a local web page to explore the SR space of one image.

A small HTTP server (the standard library's, one page, a JSON API) around an `Explorer`,
which holds the model, the opened image, its `PreparedLR` (encoder features and the flow's
condition-only terms, computed once per image) and the current `Settings`:

    GET  /                 the page (page.html)
    POST /api/open         {"image": data URL, "hr": bool} -> the LR (and HR) shown
    POST /api/render       {"seed", "temperature", "brush": {mask, temperature} | null,
                            "uncertainty": n (0: none)} -> the sample, its uncertainty map
    POST /api/region       {"mask", "seed", "temperature"} -> the sample re-drawn inside mask

Every answer is JSON; a failure is {"error": one line}, shown in the page, and the terminal
shows no traceback.
"""

from __future__ import annotations

import base64
import json
import math
import tempfile
import threading
import warnings
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cinn_sr.datasets import ImageReadError, imresize, png_bytes, read_image, to_tensor
from cinn_sr.explore.session import (
    Region,
    Settings,
    apply_region,
    base_sample,
    parse_brush,
    parse_seed,
    parse_temperature,
)
from cinn_sr.metrics import lr_psnr, psnr
from cinn_sr.model import PreparedLR, SRFlow
from cinn_sr.sampling import NONFINITE_REMEDY, nonfinite_fraction
from cinn_sr.uncertainty import colour_map, mean_and_std

MAX_UPLOAD = 64 * 2**20
"""Largest request body accepted (bytes)."""
MAX_UNCERTAINTY_SAMPLES = 16
"""Most samples one uncertainty map may take (each is a decode)."""


def data_url(image: np.ndarray | Tensor) -> str:
    """An image as a PNG data URL (for an <img> of the page)."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


def image_from_data_url(url: str) -> np.ndarray:
    """An uploaded image (data URL of any format `read_image` reads) as uint8 HWC RGB."""
    try:
        raw = base64.b64decode(url.split(",", 1)[1], validate=True)
    except (IndexError, ValueError):
        raise ImageReadError("the upload is not an image file") from None
    with tempfile.NamedTemporaryFile(suffix=".img") as handle:
        handle.write(raw)
        handle.flush()

        def named(text: str) -> str:
            text = text.replace(handle.name, "the upload")
            return text.replace(Path(handle.name).name, "the upload")

        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                rgb = read_image(handle.name)
        except ImageReadError as error:
            raise ImageReadError(named(str(error))) from None
    for warning in caught:
        warnings.warn(named(str(warning.message)), stacklevel=2)
    return rgb


@dataclass
class Opened:
    """The image being explored."""

    lr: Tensor
    hr: Tensor | None
    prepared: PreparedLR


class Explorer:
    """The page's state and actions (one user; calls are serialised by a lock)."""

    def __init__(self, model: SRFlow, lpips=None) -> None:
        self.model, self.lpips = model, lpips
        self.opened: Opened | None = None
        self.settings = Settings()
        self.latents: list[Tensor] | None = None
        self.image: Tensor | None = None
        self.lock = threading.Lock()

    def open(self, rgb: np.ndarray, is_hr: bool) -> dict:
        """Open an LR image, or an HR one (cropped to a multiple of the scale and downscaled
        with MATLAB-style bicubic, rounded to uint8, as `cinn-sr eval` makes its LR)."""
        s = self.model.config.scale
        hr = None
        if is_hr:
            h, w = (rgb.shape[0] // s) * s, (rgb.shape[1] // s) * s
            if h == 0 or w == 0:
                raise ValueError(f"the HR image ({rgb.shape[0]}x{rgb.shape[1]}) is smaller "
                                 f"than the scale {s}")
            hr = to_tensor(rgb[:h, :w])[None]
            rgb = imresize(rgb[:h, :w], 1 / s)
        lr = to_tensor(rgb)[None]
        device = next(self.model.parameters()).device
        self.opened = Opened(lr, hr, self.model.prepare(lr.to(device)))
        self.latents = self.image = None
        return self.shown()

    def shown(self) -> dict | None:
        """The opened image as the page shows it: LR (bicubic-upscaled), HR, SR size."""
        if self.opened is None:
            return None
        lr, hr, s = self.opened.lr, self.opened.hr, self.model.config.scale
        return {"lr": data_url(imresize(lr, s).clamp(0, 1)[0]), "lr_file": data_url(lr[0]),
                "hr": None if hr is None else data_url(hr[0]),
                "size": [lr.shape[-2] * s, lr.shape[-1] * s]}

    def _require_open(self) -> Opened:
        if self.opened is None:
            raise ValueError("open an image first")
        return self.opened

    def render(self, seed: int, temperature: float, brush: dict | None, uncertainty: int) -> dict:
        """A new base sample (re-sampled regions are dropped), and its uncertainty map over
        `uncertainty` samples (seeds seed, seed + 1, ...) when that is 2 or more."""
        opened = self._require_open()
        settings = Settings(parse_seed(seed), parse_temperature(temperature), parse_brush(brush))
        if isinstance(uncertainty, bool) or not isinstance(uncertainty, int) or not (
            uncertainty == 0 or 2 <= uncertainty <= MAX_UNCERTAINTY_SAMPLES
        ):
            raise ValueError(f"uncertainty must be 0 (none) or 2 to {MAX_UNCERTAINTY_SAMPLES} "
                             f"samples, got {uncertainty!r}")
        latents, image = base_sample(self.model, opened.prepared, settings)
        answer = self._accept(settings, latents, image)
        if uncertainty >= 2:
            samples = [image] + [
                base_sample(self.model, opened.prepared, Settings(
                    (settings.seed + i) % 2**63, settings.temperature, settings.brush))[1]
                for i in range(1, uncertainty)
            ]
            _, std = mean_and_std(torch.cat(samples).clamp(0, 1))
            answer["uncertainty"] = data_url(colour_map(std[0].numpy()))
            answer["uncertainty_max"] = float(std.max())
        return answer

    def region(self, mask: str, seed: int, temperature: float) -> dict:
        """Re-sample the current image inside `mask` (everything outside stays as it is)."""
        opened = self._require_open()
        if self.latents is None:
            raise ValueError("draw a sample first")
        if not isinstance(mask, str):
            raise ValueError("mask must be a PNG data URL")
        region = Region(mask, parse_seed(seed), parse_temperature(temperature))
        latents, image = apply_region(self.model, opened.prepared, self.latents, self.image,
                                      region)
        settings = Settings(self.settings.seed, self.settings.temperature, self.settings.brush,
                            [*self.settings.regions, region])
        return self._accept(settings, latents, image)

    def _accept(self, settings: Settings, latents: list[Tensor], image: Tensor) -> dict:
        """Make `image` the current one unless it holds NaN/inf (then say so, keep the last)."""
        fraction = float(nonfinite_fraction(image).max())
        if fraction > 0:
            raise ValueError(f"this sample has NaN/inf in {100 * fraction:.1f} % of its pixels: "
                             f"{NONFINITE_REMEDY}")
        self.settings, self.latents, self.image = settings, latents, image
        return {"sr": data_url(image[0].clamp(0, 1)), "settings": settings.to_json(),
                "metrics": self._metrics(image[0].clamp(0, 1))}

    def _metrics(self, sr: Tensor) -> dict:
        """PSNR and LPIPS against the HR (when an HR was opened) and LR-PSNR (always)."""
        opened = self._require_open()
        scale = self.model.config.scale
        found = {"lr_psnr": lr_psnr(sr, opened.lr[0], scale)}
        if opened.hr is not None:
            found["psnr"] = psnr(sr, opened.hr[0])
            if self.lpips is not None:
                with torch.no_grad():
                    found["lpips"] = float(self.lpips(sr[None] * 2 - 1, opened.hr[0][None] * 2 - 1))
        return {k: (round(v, 4) if math.isfinite(v) else None) for k, v in found.items()}


def _page() -> bytes:
    return files("cinn_sr.explore").joinpath("page.html").read_bytes()


class Handler(BaseHTTPRequestHandler):
    """The page and the JSON API of one `Explorer` (`server.explorer`)."""

    def log_message(self, format, *args) -> None:  # quiet: no line per request
        pass

    def do_GET(self) -> None:
        if self.path in ("/", "/index.html"):
            self._send(200, _page(), "text/html; charset=utf-8")
        elif self.path == "/api/state":
            answer = self.server.explorer.shown() or {}
            self._send(200, json.dumps(answer).encode(), "application/json")
        else:
            self._send(404, b"not found", "text/plain")

    def do_POST(self) -> None:
        explorer: Explorer = self.server.explorer
        actions = {
            "/api/open": lambda q: explorer.open(image_from_data_url(_field(q, "image", str)),
                                                 _field(q, "hr", bool, False)),
            "/api/render": lambda q: explorer.render(
                q.get("seed", 0), _field(q, "temperature", object), q.get("brush"),
                q.get("uncertainty", 0)),
            "/api/region": lambda q: explorer.region(
                _field(q, "mask", object), q.get("seed", 0), _field(q, "temperature", object)),
        }
        if self.path not in actions:
            self._send(404, b"not found", "text/plain")
            return
        try:
            length = int(self.headers.get("Content-Length", 0))
            if not 0 <= length <= MAX_UPLOAD:
                raise ValueError(f"the request must be 0 to {MAX_UPLOAD // 2**20} MiB")
            query = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(query, dict):
                raise ValueError("the request must be a JSON object")
            with explorer.lock:
                answer = actions[self.path](query)
        except (ValueError, TypeError, RuntimeError) as error:
            answer = {"error": _one_line(error)}
        except Exception as error:  # noqa: BLE001 (the page shows it; the server goes on)
            answer = {"error": f"{type(error).__name__}: {_one_line(error)}"}
        self._send(200, json.dumps(answer).encode(), "application/json")

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page went away


def _field(query: dict, name: str, kind: type, default=None):
    """`query[name]` of type `kind` (`object`: any), `default` when absent and given."""
    if name not in query:
        if default is not None:
            return default
        raise ValueError(f"the request lacks {name!r}")
    value = query[name]
    if kind is not object and not isinstance(value, kind):
        raise ValueError(f"{name!r} must be a {kind.__name__}, got {value!r:.40}")
    return value


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def make_server(explorer: Explorer, host: str = "127.0.0.1", port: int = 7860):
    """The HTTP server of `explorer` (not started); port 0 picks a free one."""
    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as error:
        raise OSError(f"cannot listen on {host}:{port} ({error.strerror}): choose another "
                      "--port (0: a free one)") from None
    server.explorer = explorer
    server.daemon_threads = True
    return server


def serve(
    model: SRFlow, image: str | None = None, is_hr: bool = False, host: str = "127.0.0.1",
    port: int = 7860, ready=print,
) -> None:
    """Serve the explorer until Ctrl-C: open `image` first (if given), call `ready(url)` once
    the page can be loaded. LPIPS is shown when its weights are provisioned."""
    from cinn_sr.lpips import LPIPSWeightsError, load_lpips

    try:
        lpips = load_lpips().eval()
    except LPIPSWeightsError:
        lpips = None
    explorer = Explorer(model.eval(), lpips)
    if image is not None:
        explorer.open(read_image(image), is_hr)
    server = make_server(explorer, host, port)
    shown_host = "127.0.0.1" if host == "0.0.0.0" else host
    ready(f"http://{shown_host}:{server.server_address[1]}/")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
