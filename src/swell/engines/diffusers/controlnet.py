"""Canny edges for ControlNet conditioning, with numpy and PIL only (no OpenCV, no vision stack).

The steps are OpenCV's `Canny` with its defaults, so the usual thresholds (100, 200) mean what users
expect: a light Gaussian blur, 3x3 Sobel gradients with the L1 magnitude |gx| + |gy|, non-maximum
suppression along the gradient direction quantised to 0/45/90/135 degrees, then hysteresis: weak
edge pixels (>= low) are kept when 8-connected to a strong one (>= high). The result is a white-on-
black RGB image, the form canny ControlNets were trained on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageFilter

BLUR_RADIUS = 1.0
SOBEL = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32)
MAX_HYSTERESIS_ROUNDS = 10_000  # a bound on the flood fill; each round grows edges by one pixel


def canny(image: Image.Image, low: int = 100, high: int = 200) -> Image.Image:
    """The canny edge map of `image` as an RGB image of the same size."""
    gray = np.asarray(image.convert("L").filter(ImageFilter.GaussianBlur(BLUR_RADIUS)), dtype=np.float32)
    gx, gy = _convolve(gray, SOBEL), _convolve(gray, SOBEL.T)
    magnitude = np.abs(gx) + np.abs(gy)
    thin = _suppress(magnitude, gx, gy)
    edges = _hysteresis(thin >= high, thin >= low)
    rgb = np.repeat((edges * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    return Image.fromarray(rgb, "RGB")


def _convolve(array: np.ndarray[Any, Any], kernel: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """A 3x3 correlation with edge-replicated borders (OpenCV's BORDER_REPLICATE)."""
    padded = np.pad(array, 1, mode="edge")
    height, width = array.shape
    out = np.zeros_like(array)
    for dy in range(3):
        for dx in range(3):
            if kernel[dy, dx]:
                out += kernel[dy, dx] * padded[dy : dy + height, dx : dx + width]
    return out


def _suppress(
    magnitude: np.ndarray[Any, Any], gx: np.ndarray[Any, Any], gy: np.ndarray[Any, Any]
) -> np.ndarray[Any, Any]:
    """Magnitudes that are a maximum across the edge (along the gradient); zero elsewhere."""
    angle = (np.degrees(np.arctan2(gy, gx)) + 180.0) % 180.0
    sector = (((angle + 22.5) // 45) % 4).astype(np.int8)  # 0: 0deg, 1: 45deg, 2: 90deg, 3: 135deg
    padded = np.pad(magnitude, 1)
    height, width = magnitude.shape
    keep = np.zeros(magnitude.shape, dtype=bool)
    for index, (dy, dx) in enumerate(((0, 1), (1, 1), (1, 0), (1, -1))):
        ahead = padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
        behind = padded[1 - dy : 1 - dy + height, 1 - dx : 1 - dx + width]
        keep |= (sector == index) & (magnitude > behind) & (magnitude >= ahead)
    return np.where(keep, magnitude, 0.0)


def _hysteresis(strong: np.ndarray[Any, Any], weak: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Weak pixels 8-connected (through weak pixels) to a strong one, and the strong ones."""
    edges = strong.copy()
    for _ in range(MAX_HYSTERESIS_ROUNDS):
        padded = np.pad(edges, 1)
        grown = np.zeros_like(edges)
        height, width = edges.shape
        for dy in range(3):
            for dx in range(3):
                grown |= padded[dy : dy + height, dx : dx + width]
        grown &= weak
        if np.array_equal(grown, edges):
            break
        edges = grown | strong
    return edges
