"""Prompt accuracy of text-to-image samples of ``shapes-text``: the colour, shape and position read
back from the pixels by a fixed rule, compared with the caption.

The rule stands in for the object detector with which GenEval (Ghosh et al. 2023, "GenEval: an
object-focused framework for evaluating text-to-image alignment") checks the colours and positions
a prompt asks for; on this data the pixels alone determine them. With pixels v = (x + 1) / 2
clipped to [0, 1] and coverage a = max over channels of v (exact for a palette colour anti-aliased
over black, whose pixels are the colour times the coverage):

- **foreground** F: the pixels with a > `FOREGROUND` = 1/2, the shape cut at half coverage; an
  image with no such pixel is empty and every attribute is None;
- **color**: the `SHAPES_TEXT_COLORS` entry nearest (Euclidean, in [0, 1] RGB) to the foreground's
  mean RGB divided by its mean coverage, sum_F v / sum_F a (the colour with the anti-aliased
  edges' darkening undone);
- **position**: from the centroid c of F, in units of the image side from the top left:
  "center" when |c - (1/2, 1/2)| < `CENTER_RADIUS` = sqrt(2)/8, half the distance from the image
  centre to a quadrant's centre; otherwise "top" when c_y < 1/2 else "bottom", and "left" when
  c_x < 1/2 else "right";
- **shape**: from the fill ratio f = A / (W H) of the shape's area to its bounding box's, all from
  the coverage counted on F and the pixels next to it (3 x 3 neighbourhood: where the anti-aliased
  edges lie, so background noise elsewhere adds nothing): A = sum a, W = sum over columns of the
  column's max a, H = sum over rows of the row's max a (for an axis-aligned shape a column's
  largest coverage is the fraction of it the shape spans, so W is the box's width in pixels). The
  ideal ratios are 1/2 (triangle), pi/4 (circle) and 1 (square); "triangle" when f < 0.7,
  "square" when f >= (pi/4 + 1)/2 ~ 0.893, "circle" between. The triangle cut sits above the
  midpoint 0.64 because at 32 x 32 a small triangle's acute corners lose coverage in W and H: the
  data set's triangles measure 0.53 to 0.66, circles 0.78 to 0.80, squares 1.00 to 1.03.

On the data set itself the rule reads every attribute right at 32 x 32 and 64 x 64. At 16 x 16
the shapes are 2 to 3 pixels in radius and about 15% of their shapes are misread (colour and
position stay exact): evaluate at 32 x 32 or more.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..training.data import SHAPES_TEXT_COLORS, SHAPES_TEXT_POSITIONS, SHAPES_TEXT_SHAPES

__all__ = ["read_attributes", "prompt_accuracy", "parse_caption", "FOREGROUND", "CENTER_RADIUS", "FILL_CUTS"]

FOREGROUND = 0.5  # coverage above which a pixel belongs to the shape
CENTER_RADIUS = math.sqrt(2) / 8  # centroids nearer the image centre than this (in sides) are "center"
FILL_CUTS = (0.7, (math.pi / 4 + 1) / 2)  # triangle < FILL_CUTS[0] <= circle < FILL_CUTS[1] <= square
ATTRIBUTES = ("color", "shape", "position")
_NAMES = (tuple(SHAPES_TEXT_COLORS), SHAPES_TEXT_SHAPES, SHAPES_TEXT_POSITIONS)  # each attribute's values


def read_attributes(images: torch.Tensor) -> list[dict]:
    """The color, shape and position of each image `(N, 3, H, W)` in [-1, 1], measured from its
    pixels by the module's rule, with the measurements behind them.

    Each dict holds "color", "shape" and "position" (names as in the captions, or None for an
    empty image) and "rgb" (the un-premultiplied mean colour), "centroid" ((x, y) in image sides
    from the top left) and "fill" (A / (W H)), None for an empty image.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"need RGB images (N, 3, H, W), got shape {tuple(images.shape)}")
    v = ((images.detach().float() + 1) / 2).clamp(0, 1)
    a = v.amax(1)
    fg = a > FOREGROUND
    count = fg.sum((1, 2))
    h, w = a.shape[1:]
    cx = (fg * ((torch.arange(w, device=a.device) + 0.5) / w)).sum((1, 2)) / count
    cy = (fg * ((torch.arange(h, device=a.device) + 0.5) / h)[:, None]).sum((1, 2)) / count
    rgb = (v * fg[:, None]).sum((2, 3)) / (a * fg).sum((1, 2))[:, None]
    palette = torch.tensor(list(SHAPES_TEXT_COLORS.values()), device=a.device)
    colour = torch.cdist(rgb, palette).argmin(1)
    near = F.max_pool2d(fg[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0
    c = a * near
    fill = c.sum((1, 2)) / (c.amax(1).sum(1) * c.amax(2).sum(1))
    # indices into SHAPES_TEXT_SHAPES (circle, square, triangle) and SHAPES_TEXT_POSITIONS
    kind = torch.where(fill < FILL_CUTS[0], 2, torch.where(fill < FILL_CUTS[1], 0, 1))
    quadrant = (cy >= 0.5).long() * 2 + (cx >= 0.5).long()  # top left, top right, bottom left, bottom right
    position = torch.where(torch.hypot(cx - 0.5, cy - 0.5) < CENTER_RADIUS, 4, quadrant)

    out = []
    for n, i, j, k, m, x, y, f in zip(count.tolist(), colour.tolist(), kind.tolist(), position.tolist(),
                                      rgb.tolist(), cx.tolist(), cy.tolist(), fill.tolist()):
        read = {"color": _NAMES[0][i], "shape": _NAMES[1][j], "position": _NAMES[2][k], "rgb": tuple(m),
                "centroid": (x, y), "fill": f}
        out.append(read if n else dict.fromkeys(read))
    return out


def parse_caption(caption: str) -> dict:
    """The color, shape and position named by a caption "<color> <shape> <position>" ("red circle
    top left"), case-insensitive; ValueError if it is not of the shapes-text grammar."""
    words = caption.lower().split()
    parsed = dict(zip(ATTRIBUTES, (*words[:2], " ".join(words[2:]))))
    if len(words) < 3 or any(parsed[k] not in names for k, names in zip(ATTRIBUTES, _NAMES)):
        raise ValueError(f"caption {caption!r} is not '<color> <shape> <position>' in shapes-text's words")
    return parsed


def prompt_accuracy(images: torch.Tensor, captions) -> dict:
    """The fraction of `images` whose color, shape and position (`read_attributes`) each match
    their caption's, and of those matching all three ("all"); an empty image matches nothing."""
    captions = [captions] if isinstance(captions, str) else list(captions)
    if len(captions) != len(images):
        raise ValueError(f"need one caption per image, got {len(captions)} captions for {len(images)} images")
    wanted = [parse_caption(c) for c in captions]
    read = read_attributes(images)
    hits = {k: [r[k] == want[k] for r, want in zip(read, wanted)] for k in ATTRIBUTES}
    hits["all"] = [all(h) for h in zip(*hits.values())]
    return {k: sum(h) / len(h) for k, h in hits.items()}
