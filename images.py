"""Reading scans: opening an image file or embedded bytes, checking it cheaply, and bringing
16-bit and float scans to 8 bits (data.load_image uses all three).

    image_problem("scan.png")          -> None, or why it cannot be used ("is an empty file (0 bytes)")
    to_8bit(Image.open("ct.png"))      -> an 8-bit image, the scan's own range spread over 0..255
"""

import io
import os

import numpy as np
from PIL import Image


def open_image(image: "str | bytes") -> Image.Image:
    """PIL's lazy open of a path, or of the bytes of an image embedded in a dataset file."""
    return Image.open(io.BytesIO(image) if isinstance(image, bytes) else image)


HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I", "F")  # 16-bit scans (from DICOM), 32-bit ints, floats


def to_8bit(image: Image.Image, window: tuple[float, float] | None = None) -> Image.Image:
    """A 16-bit, 32-bit or float image as 8-bit grayscale, its range (or `window`) spread over 0..255;
    other images as they are. PIL's convert("RGB") would clip instead: a 12-bit CT stored in 16 bits
    (0..4095) would come out 94% white.

        pixels [[0, 1000], [2000, 4000]] (I;16) -> [[0, 64], [128, 255]]   (range 0..4000)
        window (1000, 2000)                      -> [[0, 0], [255, 255]]
    [reconstructed] The papers do not say how deep scans are read; --window LOW HIGH fixes the range
    in raw pixel units instead of each image's own min..max. A constant image comes out black.
    """
    if image.mode not in HIGH_DEPTH_MODES:
        return image
    pixels = np.asarray(image, dtype=np.float32)  # exact for 16-bit values, 8x faster than float64
    low, high = window or (pixels.min(), pixels.max())
    scaled = (pixels - low) / (high - low) * 255 if high > low else np.zeros_like(pixels)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def unreadable(error: Exception) -> str:
    """Why PIL could not read an image, in words for an error message."""
    if isinstance(error, Image.UnidentifiedImageError):  # PIL's message repeats the path
        return "is not an image file PIL can read"
    return f"is not a readable image ({error})"


def image_problem(image: "str | bytes", decode: bool = False) -> str | None:
    """Why an image file (a path, or an embedded file's bytes) cannot be used, or None if it can.

    Cheap by default (about 30 us a JPEG): PIL reads the header, and verify() walks the file's
    structure (a PNG's chunks and checksums) without decoding pixels. decode=True (--check-images)
    then decodes every pixel too (about 1 ms a 600x600 JPEG), which also finds a JPEG cut short.
    """
    if isinstance(image, str) and not os.path.isfile(image):
        return "not found"
    if (len(image) if isinstance(image, bytes) else os.path.getsize(image)) == 0:
        return "is an empty file (0 bytes)"
    try:
        with open_image(image) as opened:
            opened.verify()
        if decode:  # verify() leaves an image unusable: open it again
            with open_image(image) as opened:
                opened.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:  # SyntaxError: broken PNG
        return unreadable(error)
    return None
