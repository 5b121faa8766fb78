"""A user's own picture turned into what the model was trained on: channels, size and polarity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from fmnist.artifacts.inputs import existing_file
from fmnist.errors import UserError

# A photo from a phone is 12-50 Mpx; a header claiming more is a decompression bomb, refused before decoding.
MAX_PIXELS = 64_000_000
# The formats Pillow decodes itself. Left to itself it tries every plugin on a file's content, whatever its name,
# and opens EPS by running Ghostscript over it: PostScript is a program, and a picture from elsewhere is data.
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
READ = "PNG, JPEG, BMP, GIF, TIFF, WebP and PBM/PGM/PPM"


def load_image_file(path: str | Path, channels: int, size: int, invert: bool | str = "auto") -> torch.Tensor:
    """Read a picture in one of FORMATS into a uint8 tensor (channels, size, size).

    The image is scaled so its longer side fits, then centred on its own background colour. For
    grayscale models, `invert="auto"` flips a dark-on-light photo into the light-on-dark look of MNIST.
    """
    path = existing_file(path, "image")
    try:
        with Image.open(path, formats=FORMATS) as img:
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise UserError(f"{path} claims {w}x{h} pixels, more than {MAX_PIXELS:,}: refusing to decode it")
            img.load()
            img = ImageOps.exif_transpose(img)
            img = _on_background(_to_8bit(img)).convert("L" if channels == 1 else "RGB")
    except Image.DecompressionBombError:  # Pillow's own bound, checked when it opens the header
        raise UserError(f"{path} claims more than {MAX_PIXELS:,} pixels: refusing to decode it") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"{path} is not an image that can be read ({type(exc).__name__}); fmnist-predict reads "
                        f"{READ}") from None
    w, h = img.size
    scale = size / max(w, h)
    img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    array = np.asarray(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    if channels == 1 and _should_invert(array, invert):
        array = 255 - array
    border = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]]).mean(0)
    canvas = np.empty((size, size, array.shape[2]), dtype=np.uint8)
    canvas[:] = np.round(border).astype(np.uint8)
    top, left = (size - array.shape[0]) // 2, (size - array.shape[1]) // 2
    canvas[top:top + array.shape[0], left:left + array.shape[1]] = array
    return torch.from_numpy(canvas).permute(2, 0, 1).contiguous()


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and float grayscale scaled to 0-255 (Pillow's convert would clip them to white)."""
    if img.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return img
    array = np.asarray(img, dtype=np.float64)
    peak = float(array.max(initial=0))
    if img.mode == "F":
        top = max(peak, 1.0)  # floats in [0, 1], or in whatever range the file uses
    elif img.mode == "I" and peak <= 255:
        top = 255.0  # 8-bit values stored as 32-bit integers
    else:
        top = 65535.0
    return Image.fromarray(np.clip(np.round(array * (255.0 / top)), 0, 255).astype(np.uint8))


def _on_background(img: Image.Image) -> Image.Image:
    """An image with transparency laid on an opaque background that its drawing stands out from: white under dark
    content, black under light. Converting dropped the alpha channel and kept the colour of transparent pixels,
    which is usually black: a black digit drawn on a transparent canvas became an all-black picture."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode not in ("RGBA", "LA", "PA", "RGBa", "La"):
        return img
    rgba = img.convert("RGBA")
    alpha = np.asarray(rgba, dtype=np.float64)[..., 3]
    luminance = np.asarray(rgba.convert("L"), dtype=np.float64)
    dark = alpha.sum() > 0 and float(np.average(luminance, weights=alpha)) < 127.5
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255) if dark else (0, 0, 0, 255))
    return Image.alpha_composite(background, rgba)


def _should_invert(array: np.ndarray, invert: bool | str) -> bool:
    if invert == "auto":
        border = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]])
        return float(border.mean()) > 127.5  # light background: a photo of dark ink or a dark object
    return bool(invert)
